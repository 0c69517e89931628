"""The models an evaluation names, resolved to what ``from_pretrained`` loads, and checked before sampling.

An entry of ``eval.models`` (or the ``model`` config) is one of:

* a Hugging Face model directory (``config.json`` and a tokenizer);
* a training run's output directory: its exported ``model/`` (a pipeline run's ``train/model/``);
* a Lightning checkpoint written by training (FineTuningModule): a ``.ckpt`` file, or the directory
  of a sharded one. Its weights are exported on first use into a Hugging Face directory, with the
  architecture and tokenizer of the model it was fine-tuned from;
* a hub id.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.data import AttributeDict
from omegaconf import OmegaConf

from mindgap import publish
from mindgap.checks import require_label
from mindgap.config import MindgapConfig, to_typed
from mindgap.errors import ConfigError
from mindgap.fingerprints import config_fingerprint, file_digest
from mindgap.models.config import ModelConfig
from mindgap.models.loading import (
    ModelSource,
    load_generation_config,
    load_model_config,
    load_tokenizer,
    model_fingerprint,
)
from mindgap.models.resolve import resolve_model, resolve_model_path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# Where a run directory keeps its exported model: mindgap-train, then mindgap-pipeline.
RUN_EXPORTS = ("model", "train/model")
# The prefix FineTuningModule's state_dict puts before the transformers model's own keys.
MODULE_PREFIX = "model."
# torch.compile wraps modules and prefixes their keys with this.
COMPILED_PREFIX = "_orig_mod."
EXPORT_SOURCE = "export_source.json"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# Parent directories searched for the run's .hydra/config.yaml (checkpoints/ -> run -> pipeline run).
_CONFIG_SEARCH_DEPTH = 4


@dataclass(frozen=True)
class EvalModel:
    """One model to evaluate."""

    # Names its results directory and its table rows.
    label: str
    # The entry as given (for the ``model`` config: its name_or_path, or the built model's directory).
    spec: str
    # hf_dir | run_dir | checkpoint | hub
    kind: str
    # What from_pretrained loads; for a checkpoint, the directory it is exported to.
    path: str
    # The checkpoint and the model it was fine-tuned from (kind=checkpoint only).
    checkpoint: str | None = None
    base_model: str | None = None
    # Hub revisions of ``path`` and ``base_model`` (the ``model`` config's, for that model); trust_remote_code
    # is the ``model`` config's for every model.
    revision: str | None = None
    base_revision: str | None = None
    trust_remote_code: bool = False

    @property
    def source(self) -> ModelSource:
        return ModelSource(self.path, self.revision, self.trust_remote_code)

    @property
    def base_source(self) -> ModelSource:
        assert self.base_model is not None
        return ModelSource(self.base_model, self.base_revision, self.trust_remote_code)


def resolve_models(config: MindgapConfig, export_root: Path, model_path: str | None = None) -> list[EvalModel]:
    """Every model to evaluate, resolved and checked (tokenizer, base model) before anything is sampled.

    ``model_path`` (the pipeline's freshly trained model) wins over ``eval.models``, which wins over the
    ``model`` config. Checkpoints are exported under ``export_root/<label>`` by :func:`materialise`.
    """
    evaluation = config.eval
    if model_path is not None:
        specs, labels = [model_path], []
    elif evaluation.models:
        specs, labels = list(evaluation.models), list(evaluation.labels)
    else:
        specs = [resolve_model_path(config.model, config.cache_dir, config.data_root)]
        labels = list(evaluation.labels) or [config.model.name]
    resolved = []
    for index, spec in enumerate(specs):
        model = _classify(spec)
        label = labels[index] if labels else default_label(model)
        require_label(f"model {spec}: label {label!r}", label)
        model = replace(
            model, label=label, revision=_revision_of(spec, config), trust_remote_code=config.model.trust_remote_code
        )
        if model.kind == "checkpoint":
            base = _base_model(Path(spec), config)
            model = replace(model, base_model=base.path, base_revision=base.revision, path=str(export_root / label))
        _check_tokenizer(model)
        resolved.append(model)
    seen: dict[str, str] = {}
    for model in resolved:
        if model.label in seen:
            raise ConfigError(
                f"models {seen[model.label]} and {model.spec} both get the label {model.label!r}; name them with"
                " labels=[...]"
            )
        seen[model.label] = model.spec
    if evaluation.baseline is not None and len(resolved) > 1 and evaluation.baseline not in seen:
        raise ConfigError(f"eval.baseline={evaluation.baseline!r} is not one of the labels: {', '.join(seen)}")
    return resolved


def _revision_of(spec: str, config: MindgapConfig) -> str | None:
    """``model.revision`` for the ``model`` config's own model, wherever it is named (the pipeline lists it)."""
    model = config.model
    if model.revision is None or model.name_or_path is None:
        return None
    return model.revision if spec == resolve_model_path(model, config.cache_dir, config.data_root) else None


def _classify(spec: str) -> EvalModel:
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".ckpt":
            raise ConfigError(f"model {spec} is a file but not a Lightning checkpoint (.ckpt)")
        return EvalModel("", spec, "checkpoint", "", checkpoint=str(path))
    if path.is_dir():
        if path.suffix == ".ckpt" or (path / ".metadata").is_file():
            return EvalModel("", spec, "checkpoint", "", checkpoint=str(path))
        if (path / "config.json").is_file():
            return EvalModel("", spec, "hf_dir", str(path))
        for export in RUN_EXPORTS:
            if (path / export / "config.json").is_file():
                return EvalModel("", spec, "run_dir", str(path / export))
        raise ConfigError(
            f"model directory {spec} holds no config.json and no exported model ({', '.join(RUN_EXPORTS)}): it is"
            " neither a Hugging Face model nor a training run"
        )
    if spec.endswith(".ckpt") or spec.startswith(("/", "./", "../", "~")) or not _HUB_ID.fullmatch(spec):
        raise ConfigError(f"model {spec}: no such file or directory")
    return EvalModel("", spec, "hub", spec)


def default_label(model: EvalModel) -> str:
    """A readable label: the run's directory name for run exports, the file name for checkpoints."""
    if model.kind == "hub":
        return model.spec.rstrip("/").rsplit("/", 1)[-1]
    path = Path(model.spec).expanduser().resolve()
    if model.kind == "checkpoint":
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return f"{_run_name(run)}-{path.name.removesuffix('.ckpt')}"
    return _run_name(path)


def _run_name(path: Path) -> str:
    """runs/dft/train/model -> dft: the directory names the run, not the export inside it."""
    parts = list(path.parts)
    while len(parts) > 1 and parts[-1] in ("model", "train"):
        parts.pop()
    return parts[-1] if parts else str(path)


def _check_tokenizer(model: EvalModel) -> None:
    if model.kind == "checkpoint":
        assert model.base_model is not None
        base = Path(model.base_model)
        if base.is_dir() and not any((base / name).is_file() for name in TOKENIZER_FILES):
            files = ", ".join(TOKENIZER_FILES)
            raise ConfigError(f"base model directory {base} of checkpoint {model.spec} has no tokenizer ({files})")
        return
    if model.kind == "hub":
        try:
            load_tokenizer(model.source)
        except OSError as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f"model {model.spec}: not a local path, and as a hub id it failed: {message}") from error
        return
    if not any((Path(model.path) / name).is_file() for name in TOKENIZER_FILES):
        where = f"model directory {model.path}" + (f" (of run {model.spec})" if model.kind == "run_dir" else "")
        raise ConfigError(f"{where} has no tokenizer ({', '.join(TOKENIZER_FILES)})")


# --------------------------------------------------------------------------- checkpoints


def _base_model(checkpoint: Path, config: MindgapConfig) -> ModelSource:
    """The model a checkpoint was fine-tuned from: eval.base_model, else what the checkpoint or its run records."""
    if config.eval.base_model is not None:
        base = _classify(config.eval.base_model)
        if base.kind == "checkpoint":
            raise ConfigError(f"eval.base_model={config.eval.base_model} is a checkpoint; name the model it came from")
        return ModelSource(base.path, _revision_of(config.eval.base_model, config))
    path = _recorded_model_path(checkpoint)
    recorded = ModelSource(path) if path is not None else _run_config_model(checkpoint, config)
    if recorded is None:
        raise ConfigError(
            f"checkpoint {checkpoint} does not record the model it was fine-tuned from (no model_path in its"
            " hyper-parameters, no .hydra/config.yaml in its run): set eval.base_model=PATH_OR_HUB_ID"
        )
    return recorded


def _recorded_model_path(checkpoint: Path) -> str | None:
    hyperparameters = _checkpoint_extras(checkpoint).get("hyper_parameters") or {}
    for key in ("model_path", "base_model"):
        value = hyperparameters.get(key) if isinstance(hyperparameters, Mapping) else None
        if isinstance(value, str) and value:
            return value
    return None


def _run_config_model(checkpoint: Path, config: MindgapConfig) -> ModelSource | None:
    """The ``model`` section of the training run's saved Hydra config, resolved like the run resolved it."""
    for parent in list(checkpoint.resolve().parents)[:_CONFIG_SEARCH_DEPTH]:
        saved = parent / ".hydra" / "config.yaml"
        if not saved.is_file():
            continue
        node = OmegaConf.load(saved).get("model")
        if node is None:
            return None
        try:
            model = to_typed(node, ModelConfig)
        except ConfigError:
            return None
        return resolve_model(model, config.cache_dir, config.data_root)
    return None


# Checkpoints are unpickled as data only (weights_only): a checkpoint handed to mindgap-eval may come from anywhere,
# and unpickling arbitrary objects runs arbitrary code. A Lightning checkpoint holds tensors, plain containers and
# numbers, and its hyper-parameters as an AttributeDict (a dict); nothing else is allowed.
_SAFE_CHECKPOINT_GLOBALS = [AttributeDict]
# What a sharded checkpoint's ``.metadata`` (a plain pickle, written by torch.distributed.checkpoint) may name.
_DCP_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch": {"Size"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class UnsafeCheckpointError(ConfigError):
    """A checkpoint that would unpickle something other than tensors and plain data."""


def _refused(checkpoint: Path, error: Exception) -> UnsafeCheckpointError:
    detail = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), "") or str(error).strip()
    return UnsafeCheckpointError(
        f"checkpoint {checkpoint}: refused, it pickles objects that are not tensors or plain data"
        f" ({detail.splitlines()[0] if detail else type(error).__name__})"
    )


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _DCP_METADATA_CLASSES.get(module, ()) or (
            module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout))
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"Trying to load unsupported GLOBAL {module}.{name}")


def _load_sharded(checkpoint: Path) -> dict[str, Any]:
    """A sharded (torch.distributed.checkpoint) directory consolidated in memory, every pickle read as data only.

    Lightning's own loader unpickles ``.metadata`` and non-tensor entries without restriction.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    # Read here rather than in the reader: torch.distributed.checkpoint turns a reader's errors into an AssertionError.
    with (checkpoint / ".metadata").open("rb") as handle:
        metadata = _DataOnlyUnpickler(handle).load()
    if not isinstance(metadata, Metadata):
        raise pickle.UnpicklingError(f"Trying to load unsupported GLOBAL {type(metadata).__qualname__} as metadata")

    class DataOnlyReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            # FileSystemReader.read_metadata unpickles .metadata without restriction: it was read above instead.
            if metadata.storage_meta is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class DataOnlyPlanner(_EmptyStateDictLoadPlanner):
        # The first refusal; raised after the load, since torch.distributed.checkpoint wraps a planner's errors.
        refusal: pickle.UnpicklingError | None = None

        def load_bytes(self, read_item: Any, value: Any) -> None:
            # The default planner's load_bytes, with weights_only=True (it passes False).
            try:
                loaded = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as error:
                self.refusal = self.refusal or error
                loaded = None
            if self.flatten_state_dict:
                from torch.distributed.checkpoint._nested_dict import set_element

                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    loaded: dict[str, Any] = {}
    planner = DataOnlyPlanner()
    _load_state_dict(loaded, storage_reader=DataOnlyReader(checkpoint), planner=planner, no_dist=True)
    if planner.refusal is not None:
        raise planner.refusal
    loaded.update(_sharded_extras(checkpoint))
    return loaded


def _sharded_extras(checkpoint: Path) -> dict[str, Any]:
    """What Lightning keeps beside a sharded checkpoint's tensors (hyper-parameters, loop state), in ``meta.pt``."""
    extra = checkpoint / "meta.pt"
    return torch.load(extra, map_location="cpu", weights_only=True) if extra.is_file() else {}


def _load(checkpoint: Path, extras_only: bool = False) -> dict[str, Any]:
    """The checkpoint's contents; ``extras_only`` skips a sharded checkpoint's tensors. Refuses unsafe pickles."""
    try:
        with torch.serialization.safe_globals(_SAFE_CHECKPOINT_GLOBALS):
            if checkpoint.is_dir():
                return _sharded_extras(checkpoint) if extras_only else _load_sharded(checkpoint)
            return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise _refused(checkpoint, error) from error


def _checkpoint_extras(checkpoint: Path) -> dict[str, Any]:
    """The non-tensor part of a checkpoint (hyper-parameters), without reading a sharded one's weights."""
    return _load(checkpoint, extras_only=True)


def checkpoint_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The transformers model's state dict inside a FineTuningModule checkpoint (``model.`` prefix stripped)."""
    loaded = _load(checkpoint)
    state = loaded
    for key in ("state_dict", "model"):
        if isinstance(loaded.get(key), Mapping):
            state = loaded[key]
            break
    weights = {
        name.removeprefix(MODULE_PREFIX).replace(COMPILED_PREFIX, ""): tensor
        for name, tensor in state.items()
        if name.startswith(MODULE_PREFIX) and isinstance(tensor, torch.Tensor)
    }
    if not weights:
        raise ConfigError(
            f"checkpoint {checkpoint} has no weights under '{MODULE_PREFIX}' in its state_dict (not a checkpoint"
            " of mindgap-train?)"
        )
    return weights


def weights_fingerprint(model: EvalModel, cache_dir: str) -> str:
    """Identifies the weights without exporting a checkpoint: the checkpoint's content and its base model."""
    if model.kind != "checkpoint":
        return model_fingerprint(model.source, cache_dir)
    assert model.checkpoint is not None
    checkpoint = Path(model.checkpoint)
    if checkpoint.is_dir():
        files = sorted(path for path in checkpoint.rglob("*") if path.is_file())
        contents = [(str(file.relative_to(checkpoint)), file_digest(file, cache_dir)) for file in files]
    else:
        contents = [("", file_digest(checkpoint, cache_dir))]
    return "checkpoint:" + config_fingerprint([contents, model_fingerprint(model.base_source, cache_dir)])


def _source_record(model: EvalModel) -> dict[str, Any]:
    assert model.checkpoint is not None
    checkpoint = Path(model.checkpoint).resolve()
    stat = checkpoint.stat()
    return {
        "checkpoint": str(checkpoint),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "base_model": model.base_model,
        "base_revision": model.base_revision,
    }


def materialise(model: EvalModel) -> EvalModel:
    """Export a checkpoint into ``model.path`` unless the same checkpoint is already exported there."""
    if model.kind != "checkpoint":
        return model
    assert model.checkpoint is not None and model.base_model is not None
    target = Path(model.path)
    source = _source_record(model)
    record = target / EXPORT_SOURCE
    if record.is_file() and json.loads(record.read_text()) == source:
        return model
    export_checkpoint(Path(model.checkpoint), model.base_source, target)
    publish.write_json(target / EXPORT_SOURCE, source, indent=2)
    return model


def export_checkpoint(checkpoint: Path, base: ModelSource, target: Path) -> Path:
    """Load a checkpoint's weights into ``base``'s architecture; save model and tokenizer to ``target``."""
    from transformers import AutoModelForCausalLM

    base_model = base.path
    weights = checkpoint_weights(checkpoint)
    model_config = load_model_config(base)
    # Built on the meta device and given the checkpoint's tensors: no random initialisation, no second copy.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    try:
        outcome = model.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as error:  # shape mismatches
        reason = str(error).strip().splitlines()[-1].strip()
        raise ConfigError(f"checkpoint {checkpoint} does not fit the architecture of {base_model}: {reason}") from error
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [name for name in outcome.missing_keys if name not in tied]
    if missing or outcome.unexpected_keys:
        problem = f"missing {missing[:3]}" if missing else f"unexpected {outcome.unexpected_keys[:3]}"
        raise ConfigError(f"checkpoint {checkpoint} does not fit the architecture of {base_model}: {problem}")
    if outcome.missing_keys:
        model.tie_weights()
    if any(parameter.is_meta for parameter in model.parameters()):
        raise ConfigError(f"checkpoint {checkpoint} leaves weights of {base_model} unset")
    model.config.dtype = next(model.parameters()).dtype
    # Without one in the base model, the one derived from the model config (as transformers would).
    model.generation_config = load_generation_config(base)
    publish.clean_stale_staging(target.parent)
    # The old export (and its export_source.json, the mark of a finished one) goes as a whole.
    with publish.staged_dir(target) as staging:
        model.save_pretrained(staging)
        load_tokenizer(base).save_pretrained(staging)
    return target
