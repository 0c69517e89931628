"""Prompt templates: the standard solving prompt of each model family and the guided re-solve prompt.

Every kept response is trained under ``standard_prompt``; ``guided_prompt`` is only the
behaviour prompt of guided re-solves (DESIGN.md §1).
"""

from __future__ import annotations

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

GUIDED_REQUEST = (
    "{problem}\n\n"
    "Here is a reference solution to this problem:\n{expert_solution}\n\n"
    "Now solve the problem yourself, step by step and in your own words. "
    "Do not mention or refer to the reference solution. "
    "Put your final answer within \\boxed{{}}."
)


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
