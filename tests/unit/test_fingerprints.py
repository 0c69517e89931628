"""Every setting and file that changes a result changes the fingerprint of the stage that computes it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file

import mindgap.fingerprints
import mindgap.prompts
from mindgap.config import MindgapConfig, register_configs, to_typed
from mindgap.evaluation.models import EvalModel
from mindgap.evaluation.run import ModelEvaluation
from mindgap.fingerprints import file_digest
from mindgap.models.loading import ModelSource, model_fingerprint
from mindgap.paths import CONFIG_DIR
from mindgap.records import Problem
from mindgap.rewriting import run as rewrite_run
from mindgap.rewriting.run import stage_fingerprint

PROBLEMS = [Problem("p/0", "What is 2+3?", "5", "2+3=5. \\boxed{5}", "p")]


def _config(*overrides: str) -> MindgapConfig:
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("rewrite", overrides=["experiment=smoke", "output_dir=/tmp/unused", *overrides])
    return to_typed(cfg, MindgapConfig)


def _edit_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def _new_weights(model_dir: Path) -> None:
    """Same tensors, one value changed: the file keeps its size (only the content hash can tell)."""
    weights = load_file(model_dir / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 1
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})


def _new_prompt_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mindgap.prompts, "GUIDED_REQUEST", mindgap.prompts.GUIDED_REQUEST + " Be brief.")


# (what changes, how: given the model directory and monkeypatch; config overrides)
CHANGES: list[tuple[str, Callable[[Path, pytest.MonkeyPatch], None], list[str]]] = [
    ("verifier timeout", lambda model, patch: None, ["verifier.timeout_s=7"]),
    ("math-verify version", lambda model, patch: patch.setattr(mindgap.fingerprints, "version", lambda _: "9.9"), []),
    ("prompt template text", lambda model, patch: _new_prompt_text(patch), []),
    ("tokenizer file", lambda model, patch: _edit_json(model / "tokenizer.json", truncation=None, extra=1), []),
    ("chat template", lambda model, patch: (model / "chat_template.jinja").write_text("{{ messages }}"), []),
    ("generation config", lambda model, patch: _edit_json(model / "generation_config.json", temperature=0.5), []),
    ("weights content", lambda model, patch: _new_weights(model), []),
]


@pytest.fixture
def model_dir(tiny_model_path: str, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_path, copy)
    return copy


@pytest.mark.parametrize(("name", "change", "overrides"), CHANGES, ids=[row[0] for row in CHANGES])
def test_each_change_misses_the_rewrite_cache(
    name: str, change, overrides: list[str], model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every prompt type the stage can render (chat messages included) is covered by the prompt hash.
    config = _config("prompt_type=chat")
    before = stage_fingerprint(config, PROBLEMS, ModelSource(str(model_dir)))
    change(model_dir, monkeypatch)
    after = stage_fingerprint(_config("prompt_type=chat", *overrides), PROBLEMS, ModelSource(str(model_dir)))
    assert after != before


def test_nothing_changed_or_only_touched_is_the_same_fingerprint(model_dir: Path, tmp_path: Path) -> None:
    config = _config()
    before = stage_fingerprint(config, PROBLEMS, ModelSource(str(model_dir)))
    # Weights are identified by content: a touched (or copied) file is the same model.
    stat = (model_dir / "model.safetensors").stat()
    os.utime(model_dir / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert stage_fingerprint(config, PROBLEMS, ModelSource(str(model_dir))) == before
    # verifier.workers only schedules the checks.
    assert stage_fingerprint(_config("verifier.workers=3"), PROBLEMS, ModelSource(str(model_dir))) == before


def test_weights_are_hashed_once_per_file_version(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    weights = model_dir / "model.safetensors"
    first = file_digest(weights, tmp_path / "cache")
    opened: list[Path] = []
    original_open = Path.open

    def counting_open(self, *args, **kwargs):
        opened.append(self)
        return original_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    assert file_digest(weights, tmp_path / "cache") == first
    assert weights not in opened
    assert model_fingerprint(str(model_dir), tmp_path / "cache") == model_fingerprint(
        str(model_dir), tmp_path / "cache"
    )


@pytest.mark.parametrize("override", ["verifier.timeout_s=7"])
def test_verifier_settings_miss_the_evaluation_cache(model_dir: Path, tmp_path: Path, override: str) -> None:
    model = EvalModel("m", str(model_dir), "hf_dir", str(model_dir))
    benchmark = SimpleNamespace(name="b", problems=PROBLEMS)

    def fingerprint(*overrides: str) -> str:
        config = _config(f"cache_dir={tmp_path / 'cache'}", *overrides)
        return ModelEvaluation(config, model, tmp_path, verifier=None)._fingerprint(benchmark, ["prompt"])

    assert fingerprint(override) != fingerprint()


def test_gold_answers_are_read_by_the_configured_verifier(monkeypatch: pytest.MonkeyPatch) -> None:
    limits: list[float] = []

    class Spy(rewrite_run.Verifier):
        def gold_problems(self, golds):
            limits.append(self.timeout_s)
            return super().gold_problems(golds)

    monkeypatch.setattr(rewrite_run, "Verifier", Spy)
    monkeypatch.setattr(rewrite_run, "resolve_model", lambda *args: ModelSource("unused"))
    monkeypatch.setattr(rewrite_run, "stage_fingerprint", lambda *args: "f")
    rewrite_run.RewriteStage(_config("verifier.timeout_s=0.75", "data.limit=2"))
    assert limits == [0.75]
