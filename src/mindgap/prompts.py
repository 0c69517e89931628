"""Prompt templates: the standard solving prompt of each model family, the guided re-solve and rewrite prompts.

Every kept response is trained under ``standard_prompt``; ``guided_prompt`` is only the
behaviour prompt of guided re-solves, ``rewrite_prompt`` that of rewritten expert solutions
(``rewrite=sdft|rl_agent``; DESIGN.md §1). The RL rewriter's rewards score rewrites under two
plain scaffolds that belong to no model family: ``ALIGNMENT_SCAFFOLD`` and ``VALIDITY_JUDGE``.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

from mindgap.errors import ConfigError

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# Prompt strings with a single ``{input}`` slot, as used by the Qwen2.5-Math evaluation protocol.
TEMPLATES = {
    "qwen-boxed": (
        "<|im_start|>system\n" + BOXED_INSTRUCTION + "<|im_end|>\n"
        "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
    ),
    "deepseek-math": "User: {input}\n" + BOXED_INSTRUCTION + "\n\nAssistant:",
    "llama-base-boxed": "Question: {input}\n" + BOXED_INSTRUCTION + "\nAnswer: ",
}
# The prompt_type values: one of the templates above, or the tokenizer's own chat template.
PROMPT_TYPES = (*TEMPLATES, "chat")

GUIDED_REQUEST = (
    "{problem}\n\n"
    "Here is a reference solution to this problem:\n{expert_solution}\n\n"
    "Now solve the problem yourself, step by step and in your own words. "
    "Do not mention or refer to the reference solution. "
    "Put your final answer within \\boxed{{}}."
)

REWRITE_REQUEST = (
    "{problem}\n\n"
    "Here is a reference solution to this problem:\n{expert_solution}\n\n"
    "Rewrite this reference solution in your own words and style. Keep every step correct and keep "
    "the same final answer. Do not mention or refer to the reference solution. "
    "Put your final answer within \\boxed{{}}."
)

# The frozen backbone's view of a rewrite for the alignment reward: the question alone, no instruction, no
# chat markup, so that the score measures how natural the rewrite is to the model rather than to one template.
# The released reward code's QA prefix, verbatim.
ALIGNMENT_SCAFFOLD = "Problem:\n{problem}\n\nAnswer:\n"

# The optional validity check of the RL rewriter's gate, the released reward code's judge prompt: the rewrite
# passes when the frozen backbone's next token after it is at least as likely the first token of VALIDITY_YES as
# of VALIDITY_NO.
VALIDITY_JUDGE = (
    "You are a strict math solution verifier.\n"
    "Given a problem, a reference final answer, and a candidate solution, "
    "decide whether the candidate reasoning is logically valid and consistent with the final answer.\n"
    "Reply with ONLY one token: YES or NO.\n\n"
    "Problem:\n{problem}\n\n"
    "Reference final answer:\n{gold}\n\n"
    "Candidate solution:\n{solution}\n\n"
    "Decision:"
)
VALIDITY_YES, VALIDITY_NO = " YES", " NO"


def _render(user_content: str, prompt_type: str, tokenizer: PreTrainedTokenizerBase | None) -> str:
    if prompt_type == "chat":
        if tokenizer is None or tokenizer.chat_template is None:
            raise ConfigError("prompt_type=chat needs a tokenizer with a chat template")
        messages = [{"role": "user", "content": f"{user_content}\n{BOXED_INSTRUCTION}"}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if prompt_type not in TEMPLATES:
        raise ConfigError(f"prompt_type={prompt_type!r} is not one of {', '.join([*TEMPLATES, 'chat'])}")
    return TEMPLATES[prompt_type].replace("{input}", user_content)


def standard_prompt(problem: str, prompt_type: str, tokenizer: PreTrainedTokenizerBase | None = None) -> str:
    """The prompt a model solves ``problem`` under, at rewriting, training and evaluation alike."""
    return _render(problem, prompt_type, tokenizer)


def guided_prompt(
    problem: str, expert_solution: str, prompt_type: str, tokenizer: PreTrainedTokenizerBase | None = None
) -> str:
    """The re-solve prompt: shows the expert solution and asks for a solution in the model's own words."""
    request = GUIDED_REQUEST.format(problem=problem, expert_solution=expert_solution)
    return _render(request, prompt_type, tokenizer)


def rewrite_prompt(
    problem: str, expert_solution: str, prompt_type: str, tokenizer: PreTrainedTokenizerBase | None = None
) -> str:
    """The rewrite prompt: shows an expert solution and asks for it in the model's own words, same final answer."""
    request = REWRITE_REQUEST.format(problem=problem, expert_solution=expert_solution)
    return _render(request, prompt_type, tokenizer)


def alignment_scaffold(problem: str) -> str:
    return ALIGNMENT_SCAFFOLD.format(problem=problem)


def validity_judge_prompt(problem: str, gold: str, solution: str) -> str:
    return VALIDITY_JUDGE.format(problem=problem, gold=gold, solution=solution)


class _ShowMessages:
    """Stands in for a chat tokenizer: renders the messages themselves (the template is in the model fingerprint)."""

    chat_template = "messages"

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: object) -> str:
        return repr(messages)


PROBE_PROBLEM, PROBE_SOLUTION = "What is 1 + 1?", "1 + 1 = 2, so the answer is \\boxed{2}."


def prompts_fingerprint(prompt_type: str) -> str:
    """Hash of every prompt the stages render, on a fixed probe problem: a changed template text is a new result.

    Under ``prompt_type=chat`` the messages are hashed; the chat template belongs to the tokenizer files, which
    the model fingerprint hashes.
    """
    tokenizer: Any = _ShowMessages() if prompt_type == "chat" else None
    texts = [
        standard_prompt(PROBE_PROBLEM, prompt_type, tokenizer),
        guided_prompt(PROBE_PROBLEM, PROBE_SOLUTION, prompt_type, tokenizer),
        rewrite_prompt(PROBE_PROBLEM, PROBE_SOLUTION, prompt_type, tokenizer),
        alignment_scaffold(PROBE_PROBLEM),
        validity_judge_prompt(PROBE_PROBLEM, "2", PROBE_SOLUTION),
        VALIDITY_YES,
        VALIDITY_NO,
    ]
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
