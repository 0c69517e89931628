"""What eval.models entries resolve to: model directories, run directories, checkpoints, hub ids, bad paths."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from mindgap.config import EvalAppConfig, register_configs, to_typed
from mindgap.errors import ConfigError
from mindgap.evaluation.models import checkpoint_weights, materialise, resolve_models
from mindgap.paths import CONFIG_DIR


def eval_config(*overrides: str) -> EvalAppConfig:
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=["output_dir=/tmp/unused", *overrides])
    return to_typed(cfg, EvalAppConfig)


@pytest.fixture(scope="module")
def run_dir(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training run's output directory: model/ (the export) and a checkpoint of the same weights."""
    run = tmp_path_factory.mktemp("runs") / "dft"
    shutil.copytree(tiny_model_path, run / "model")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    # What FineTuningModule's state_dict looks like: the transformers model under the attribute ``model``.
    state = {f"model.{name}": tensor for name, tensor in model.state_dict().items()}
    (run / "checkpoints").mkdir()
    torch.save(
        {"state_dict": state, "global_step": 2, "hyper_parameters": {}}, run / "checkpoints" / "step-000002.ckpt"
    )
    return run


def test_model_config_directory_run_directory_and_pipeline_run(
    tiny_model_path: str, run_dir: Path, tmp_path: Path
) -> None:
    (configured,) = resolve_models(eval_config(), tmp_path)
    assert (configured.label, configured.kind, configured.path) == ("tiny", "hf_dir", tiny_model_path)

    pipeline = tmp_path / "pipeline-run"
    shutil.copytree(run_dir / "model", pipeline / "train" / "model")
    models = resolve_models(eval_config(f"models=[{tiny_model_path},{run_dir},{pipeline}]"), tmp_path)
    assert [(m.kind, m.path) for m in models] == [
        ("hf_dir", tiny_model_path),
        ("run_dir", str(run_dir / "model")),
        ("run_dir", str(pipeline / "train" / "model")),
    ]
    # A run is named by its directory, not by the model/ export inside it.
    assert [m.label for m in models][1:] == ["dft", "pipeline-run"]
    named = resolve_models(eval_config(f"models=[{run_dir}]", "labels=[DR+DFT]"), tmp_path)
    assert named[0].label == "DR+DFT"


def test_labels_must_tell_models_apart(tiny_model_path: str) -> None:
    with pytest.raises(ConfigError, match="both get the label"):
        resolve_models(eval_config(f"models=[{tiny_model_path},{tiny_model_path}]"), Path("/tmp/unused"))
    with pytest.raises(ConfigError, match=r"eval\.baseline='SFT' is not one of eval\.labels: A, B"):
        eval_config(f"models=[{tiny_model_path},{tiny_model_path}]", "labels=[A,B]", "baseline=SFT")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("no/such/dir/model", "model no/such/dir/model: no such file or directory"),
        ("./missing", "model ./missing: no such file or directory"),
        ("missing.ckpt", "model missing.ckpt: no such file or directory"),
    ],
)
def test_missing_models_are_named(entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", "\\.")):
        resolve_models(eval_config(f"models=[{entry}]"), Path("/tmp/unused"))


def test_hub_ids_are_checked_by_loading_their_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(path: str):
        # What transformers raises for a hub id it cannot reach or find (no network in tests).
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {path}.")

    monkeypatch.setattr("mindgap.evaluation.models.load_tokenizer", unreachable)
    with pytest.raises(
        ConfigError, match=r"model Qwen/Qwen2\.5-Math-7B: not a local path, and as a hub id it failed: "
    ):
        resolve_models(eval_config("models=[Qwen/Qwen2.5-Math-7B]"), Path("/tmp/unused"))
    monkeypatch.setattr("mindgap.evaluation.models.load_tokenizer", lambda path: None)
    (model,) = resolve_models(eval_config("models=[Qwen/Qwen2.5-Math-7B]"), Path("/tmp/unused"))
    assert (model.kind, model.path, model.label) == ("hub", "Qwen/Qwen2.5-Math-7B", "Qwen2.5-Math-7B")


def test_model_directory_without_tokenizer_says_so(tiny_model_path: str, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(Path(tiny_model_path) / "config.json", bare)
    with pytest.raises(ConfigError, match=f"model directory {bare} has no tokenizer"):
        resolve_models(eval_config(f"models=[{bare}]"), tmp_path)
    run = tmp_path / "run"
    shutil.copytree(bare, run / "model")
    with pytest.raises(ConfigError, match=f"model directory {run / 'model'} \\(of run {run}\\) has no tokenizer"):
        resolve_models(eval_config(f"models=[{run}]"), tmp_path)
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(ConfigError, match=r"holds no config\.json and no exported model"):
        resolve_models(eval_config(f"models=[{not_a_model}]"), tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="is a file but not a Lightning checkpoint"):
        resolve_models(eval_config(f"models=[{tmp_path / 'weights.bin'}]"), tmp_path)


def test_checkpoint_without_a_recorded_base_model_asks_for_one(run_dir: Path, tmp_path: Path) -> None:
    checkpoint = run_dir / "checkpoints" / "step-000002.ckpt"
    with pytest.raises(ConfigError, match=r"does not record the model it was fine-tuned from .* set eval\.base_model="):
        resolve_models(eval_config(f"models=[{checkpoint}]"), tmp_path)


def _same_logits(first: str | Path, second: str | Path) -> bool:
    tokens = torch.tensor([[5, 17, 42, 7]])
    with torch.no_grad():
        return torch.equal(
            AutoModelForCausalLM.from_pretrained(first)(tokens).logits,
            AutoModelForCausalLM.from_pretrained(second)(tokens).logits,
        )


def test_checkpoint_is_exported_with_the_base_models_architecture_and_tokenizer(
    tiny_model_path: str, run_dir: Path, tmp_path: Path
) -> None:
    checkpoint = run_dir / "checkpoints" / "step-000002.ckpt"
    (model,) = resolve_models(eval_config(f"models=[{checkpoint}]", f"eval.base_model={tiny_model_path}"), tmp_path)
    assert (model.kind, model.label, model.base_model) == ("checkpoint", "dft-step-000002", tiny_model_path)
    assert model.path == str(tmp_path / "dft-step-000002")
    materialise(model)
    assert _same_logits(model.path, tiny_model_path)
    assert AutoTokenizer.from_pretrained(model.path).eos_token == "<|im_end|>"
    # The same checkpoint again: the export is reused, not rewritten.
    written = (Path(model.path) / "model.safetensors").stat().st_mtime_ns
    materialise(model)
    assert (Path(model.path) / "model.safetensors").stat().st_mtime_ns == written


def test_checkpoint_base_model_from_the_runs_saved_config(run_dir: Path, tmp_path: Path) -> None:
    # What Hydra saves in a run's output directory: the composed config, whose model section built the base.
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(exist_ok=True)
    OmegaConf.save(compose_train_config(), hydra_dir / "config.yaml")
    try:
        (model,) = resolve_models(eval_config(f"models=[{run_dir / 'checkpoints' / 'step-000002.ckpt'}]"), tmp_path)
        assert Path(model.base_model).name.startswith("tiny-")
    finally:
        shutil.rmtree(hydra_dir)


def compose_train_config():
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=["output_dir=/tmp/unused", "model=tiny"])


def test_sharded_checkpoint_directory_is_consolidated(tiny_model_path: str, run_dir: Path, tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    state = torch.load(run_dir / "checkpoints" / "step-000002.ckpt", weights_only=False)["state_dict"]
    sharded = tmp_path / "run" / "checkpoints" / "step-000004.ckpt"
    dcp.save({"state_dict": state}, checkpoint_id=str(sharded), no_dist=True)
    weights = checkpoint_weights(sharded)
    assert set(weights) == {name.removeprefix("model.") for name in state}
    (model,) = resolve_models(eval_config(f"models=[{sharded}]", f"eval.base_model={tiny_model_path}"), tmp_path)
    assert model.kind == "checkpoint"
    assert _same_logits(materialise(model).path, tiny_model_path)


def test_checkpoint_of_another_architecture_is_refused(tiny_model_path: str, tmp_path: Path) -> None:
    checkpoint = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.lm_head.weight": torch.zeros(3, 3)}}, checkpoint)
    (model,) = resolve_models(eval_config(f"models=[{checkpoint}]", f"eval.base_model={tiny_model_path}"), tmp_path)
    with pytest.raises(ConfigError, match="does not fit the architecture"):
        materialise(model)
    not_ours = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(1)}}, not_ours)
    with pytest.raises(ConfigError, match=r"has no weights under 'model\.'"):
        checkpoint_weights(not_ours)


class _RunsACall:
    """Unpickles into a call: touches ``marker`` (what ``os.system`` of an attacker's choice would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_file(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "hyper_parameters": {"model_path": _RunsACall(marker)}}, path)
    return path


def _evil_sharded_bytes(path: Path, marker: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    dcp.save(
        {"state_dict": {"model.w": torch.zeros(2)}, "extra": _RunsACall(marker)}, checkpoint_id=str(path), no_dist=True
    )
    return path


def _evil_sharded_metadata(path: Path, marker: Path) -> Path:
    _evil_sharded_bytes(path, marker.with_name("unused"))
    (path / ".metadata").write_bytes(pickle.dumps(_RunsACall(marker)))
    return path


def _evil_sharded_extras(path: Path, marker: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    dcp.save({"state_dict": {"model.w": torch.zeros(2)}}, checkpoint_id=str(path), no_dist=True)
    torch.save({"hyper_parameters": _RunsACall(marker)}, path / "meta.pt")
    return path


# (how the checkpoint is made, whether the call is in what is read to find the base model)
EVIL_CHECKPOINTS = [
    (_evil_file, True),
    (_evil_sharded_bytes, False),
    (_evil_sharded_metadata, False),
    (_evil_sharded_extras, True),
]


@pytest.mark.parametrize(("make", "in_extras"), EVIL_CHECKPOINTS, ids=[row[0].__name__ for row in EVIL_CHECKPOINTS])
def test_checkpoint_whose_pickle_runs_a_call_is_refused(
    make, in_extras: bool, tiny_model_path: str, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    checkpoint = make(tmp_path / "evil.ckpt", marker)
    assert not marker.exists()
    # Without eval.base_model the checkpoint's hyper-parameters are read first; with it, only its weights.
    for overrides in (
        ([f"eval.base_model={tiny_model_path}"], []) if in_extras else ([f"eval.base_model={tiny_model_path}"],)
    ):
        with pytest.raises(ConfigError, match=f"checkpoint {checkpoint}: refused, it pickles objects") as refused:
            materialise(resolve_models(eval_config(f"models=[{checkpoint}]", *overrides), tmp_path)[0])
        assert "\n" not in str(refused.value)
    assert not marker.exists()
