"""The toy world's model: a small Qwen2-architecture LM pretrained here, on CPU, cached by recipe hash.

The model learns the *native* style: each example is a problem of the pretraining
distribution under the standard prompt, or (a ``guided_share`` of them) a problem shown with its
expert-style solution under the guided re-solve prompt, or (a ``rewrite_share``) one under the
rewrite prompt that asks for the shown solution in the model's own words, as instruction-tuned
models have seen paraphrasing; every example is answered with the native-style solution. The
shown problems are drawn as the others, or (``pretraining.hints_from=hinted``, the default) from
the ``world.hinted`` distribution, problems the model cannot solve alone (trades, whose direction
only the reference tells), so that it learns to read the reference.
Prompts are rendered by ``mindgap.prompts`` for the recipe's prompt type, exactly as the apps
render them, and the loss covers the response tokens only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from mindgap.errors import ConfigError
from mindgap.models.tiny import BUILDER_VERSION, CHAT_TEMPLATE, build_once, is_built, new_qwen2_model, train_tokenizer
from mindgap.prompts import (
    BOXED_INSTRUCTION,
    GUIDED_REQUEST,
    REWRITE_REQUEST,
    TEMPLATES,
    guided_prompt,
    rewrite_prompt,
    standard_prompt,
)
from mindgap.toy.config import ToyModelConfig
from mindgap.toy.problems import LEXICON
from mindgap.toy.styles import expert_solution, native_solution
from mindgap.toy.world import WORLD_VERSION, split_problems

# Bump when the examples or the training loop change, so that old cache entries are not reused.
PRETRAINING_VERSION = 2
# Problems whose texts train the tokenizer (the world's vocabulary is small; more add nothing).
_TOKENIZER_PROBLEMS = 2000
# Batches are drawn from windows of this many batches sorted by length, so a batch pads little.
_LENGTH_WINDOW = 32
PRETRAINING_REPORT = "pretraining.json"


@dataclass(frozen=True)
class PretrainingExample:
    prompt_ids: list[int]
    # The native-style solution's ids, ending with the eos token.
    response_ids: list[int]
    # standard | guided | rewrite: the prompt the problem is shown under.
    task: str

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


def model_recipe(spec: ToyModelConfig) -> dict:
    """Everything of ``spec`` the model depends on: not the target distribution, which it never sees, nor the
    hinted one unless its hints come from it."""
    recipe = dataclasses.asdict(spec)
    del recipe["world"]["target"]
    if spec.pretraining.hints_from != "hinted":
        del recipe["world"]["hinted"]
    return recipe


def toy_model_dir(spec: ToyModelConfig, cache_dir: str) -> Path:
    """Cache directory keyed by the recipe, the world and code versions, and the prompt templates."""
    payload = {
        "spec": model_recipe(spec),
        "versions": [BUILDER_VERSION, WORLD_VERSION, PRETRAINING_VERSION],
        "prompts": [TEMPLATES, GUIDED_REQUEST, REWRITE_REQUEST, BOXED_INSTRUCTION, CHAT_TEMPLATE],
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "models" / f"toy-{digest}"


def tokenizer_texts(spec: ToyModelConfig) -> list[str]:
    """Problems and both solution styles, each with the prompt wording and the world's lexicon, so that these
    are as frequent as in the examples and their words become single tokens."""
    wording = [template.replace("{input}", "") for template in TEMPLATES.values()] + [GUIDED_REQUEST, LEXICON]
    if spec.pretraining.rewrite_share > 0:  # without the rewrite task, the tokenizer of v1's world
        wording.append(REWRITE_REQUEST)
    texts = []
    for problem in split_problems(spec.world, "pretraining", min(spec.pretraining.corpus_size, _TOKENIZER_PROBLEMS)):
        texts.extend((problem.text, native_solution(problem), expert_solution(problem), *wording))
    return texts


def pretraining_examples(spec: ToyModelConfig, tokenizer: PreTrainedTokenizerFast) -> list[PretrainingExample]:
    """``corpus_size`` examples, native-style responses: standard prompts on the pretraining distribution,
    guided and rewrite prompts (showing the expert-style solution) on the ``hints_from`` one."""
    recipe = spec.pretraining
    rng = random.Random(f"mindgap-toy-pretraining/{recipe.seed}")
    plain = iter(split_problems(spec.world, "pretraining", recipe.corpus_size))
    hinted = iter(split_problems(spec.world, "hinted", recipe.corpus_size)) if recipe.hints_from == "hinted" else plain
    prompts, responses, tasks = [], [], []
    for _ in range(recipe.corpus_size):
        roll = rng.random()
        if roll < recipe.guided_share + recipe.rewrite_share:
            problem = next(hinted)
            task = "guided" if roll < recipe.guided_share else "rewrite"
            show = guided_prompt if task == "guided" else rewrite_prompt
            prompts.append(show(problem.text, expert_solution(problem), spec.prompt_type, tokenizer))
        else:
            problem, task = next(plain), "standard"
            prompts.append(standard_prompt(problem.text, spec.prompt_type, tokenizer))
        tasks.append(task)
        responses.append(native_solution(problem))
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [
        PretrainingExample(prompt_ids=p, response_ids=[*r, eos], task=t)
        for p, r, t in zip(prompt_ids, response_ids, tasks, strict=True)
    ]


def _batches(examples: list[PretrainingExample], batch_size: int, seed: int) -> Iterator[list[PretrainingExample]]:
    """Endless batches: each epoch shuffles, sorts windows of batches by length, and shuffles the batches."""
    rng = random.Random(f"mindgap-toy-batches/{seed}")
    window = batch_size * _LENGTH_WINDOW
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: examples[i].length)
            batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
        rng.shuffle(batches)
        for batch in batches:
            yield [examples[i] for i in batch]


def _collate(batch: list[PretrainingExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask, and labels (-100 outside the responses)."""
    length = max(example.length for example in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, example in enumerate(batch):
        ids = example.prompt_ids + example.response_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, len(example.prompt_ids) : len(ids)] = torch.tensor(example.response_ids)
        mask[row, : len(ids)] = 1
    return input_ids, mask, labels


def _learning_rate_factor(step: int, spec: ToyModelConfig) -> float:
    recipe = spec.pretraining
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine


def pretrain(model: torch.nn.Module, examples: list[PretrainingExample], spec: ToyModelConfig, pad_id: int) -> dict:
    """Train ``model`` in place; returns the loss curve and the wall time."""
    recipe = spec.pretraining
    torch.manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _learning_rate_factor(step, spec))
    batches = _batches(examples, recipe.batch_size, recipe.seed)
    model.train()
    losses: list[float] = []
    started, cpu_started = time.perf_counter(), time.process_time()
    bar = tqdm(range(recipe.steps), desc="pretraining the toy model", unit="step", dynamic_ncols=True)
    for step in bar:
        input_ids, mask, labels = _collate(next(batches), pad_id)
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        loss = functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0 or step == recipe.steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    bar.close()
    model.eval()
    # CPU time next to wall time: on a shared machine the wall time says more about the neighbours.
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"steps": recipe.steps, "wall_s": wall, "cpu_s": cpu, "losses": losses}


def _build(spec: ToyModelConfig, target: Path) -> None:
    tokenizer = train_tokenizer(tokenizer_texts(spec), spec.vocab_size, split_digits=True)
    model = new_qwen2_model(tokenizer, spec, seed=spec.pretraining.seed)
    examples = pretraining_examples(spec, tokenizer)
    longest = max(example.length for example in examples)
    if longest > spec.max_position_embeddings:
        raise ConfigError(f"model.toy: an example has {longest} tokens, more than max_position_embeddings")
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.pretraining.threads)
    try:
        report = pretrain(model, examples, spec, pad_id=tokenizer.pad_token_id)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / "recipe.json").write_text(json.dumps(model_recipe(spec), indent=2))
    report |= {
        "examples": len(examples),
        "guided_examples": sum(e.task == "guided" for e in examples),
        "rewrite_examples": sum(e.task == "rewrite" for e in examples),
        "longest": longest,
    }
    (target / PRETRAINING_REPORT).write_text(json.dumps(report))


def build_toy_model(spec: ToyModelConfig, cache_dir: str) -> Path:
    """The directory of the toy model for ``spec``, pretrained on first use (safe under concurrent builds)."""
    return build_once(toy_model_dir(spec, cache_dir), lambda staging: _build(spec, staging))


def toy_model_is_built(spec: ToyModelConfig, cache_dir: str) -> bool:
    return is_built(toy_model_dir(spec, cache_dir))
