"""A hub model's revision and trust_remote_code reach every from_pretrained; its fingerprint names the commit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

import mindgap.models.loading as loading
from mindgap.config import MindgapConfig, register_configs, to_typed
from mindgap.errors import ConfigError
from mindgap.models.loading import ModelSource, load_generation_config, load_model_config, model_fingerprint
from mindgap.paths import CONFIG_DIR, PROJECT_ROOT
from mindgap.rewriting.run import RewriteStage
from mindgap.training.strategy import decoder_layer_names

HUB_ID = "some-org/tiny-math"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _config(*overrides: str) -> MindgapConfig:
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return to_typed(compose("rewrite", overrides=["experiment=smoke", *overrides]), MindgapConfig)


@pytest.fixture
def hub_model(tiny_model_path: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str | None, bool]]:
    """HUB_ID served from the tiny model's directory, with every from_pretrained call recorded (no network)."""
    calls: list[tuple[str, str, str | None, bool]] = []

    def served(cls, real):
        def from_pretrained(path, *args, revision=None, trust_remote_code=False, **kwargs):
            if path != HUB_ID:  # transformers' own nested loads of the served directory
                return real(path, *args, revision=revision, trust_remote_code=trust_remote_code, **kwargs)
            calls.append((cls.__name__, path, revision, trust_remote_code))
            return real(tiny_model_path, *args, **kwargs)

        return from_pretrained

    for cls in (AutoTokenizer, AutoModelForCausalLM, AutoConfig, GenerationConfig):
        monkeypatch.setattr(cls, "from_pretrained", served(cls, cls.from_pretrained))
    # The hub cache keeps files under snapshots/<commit>/.
    snapshot = f"/hub/models--some-org--tiny-math/snapshots/{COMMIT}/config.json"
    monkeypatch.setattr(loading, "hf_hub_download", lambda repo_id, filename, revision=None: snapshot)
    loading.resolved_commit.cache_clear()
    return calls


def test_the_rewriting_stage_loads_the_pinned_revision_everywhere(
    hub_model: list[tuple[str, str, str | None, bool]], tmp_path: Path
) -> None:
    overrides = [
        f"model.name_or_path={HUB_ID}",
        "model.revision=v1.2",
        "model.trust_remote_code=true",
        "model.tiny=null",
        "data.limit=2",
        f"rewrite.work_dir={tmp_path / 'work'}",
        f"output_dir={tmp_path}",
    ]
    result = RewriteStage(_config(*overrides)).run()
    loaded = {name for name, *_ in hub_model}
    # Tokenizer, the generator's model and the rescorer's model: every one at the pinned revision.
    assert {"AutoTokenizer", "AutoModelForCausalLM"} <= loaded
    assert all((revision, trust) == ("v1.2", True) for _, _, revision, trust in hub_model), hub_model
    assert result.manifest["model"]["fingerprint"] == f"{HUB_ID}@{COMMIT}"
    assert result.manifest["behavior_models"]["expert"] == f"{HUB_ID}@{COMMIT}"


def test_model_and_generation_configs_and_sharding_read_the_pinned_revision(
    hub_model: list[tuple[str, str, str | None, bool]],
) -> None:
    source = ModelSource(HUB_ID, "v1.2", trust_remote_code=True)
    assert load_model_config(source).model_type == "qwen2"
    load_generation_config(source)
    assert decoder_layer_names(source) == {"Qwen2DecoderLayer"}
    assert {name for name, *_ in hub_model} == {"AutoConfig", "GenerationConfig"}
    assert all((revision, trust) == ("v1.2", True) for _, _, revision, trust in hub_model)


def test_a_hub_id_is_fingerprinted_by_its_resolved_commit(monkeypatch: pytest.MonkeyPatch, tiny_model_path: str):
    asked: list[tuple[str, str | None]] = []

    def download(repo_id: str, filename: str, revision: str | None = None) -> str:
        asked.append((repo_id, revision))
        return f"/hub/snapshots/{'f' * 40 if revision == 'v2' else COMMIT}/{filename}"

    monkeypatch.setattr(loading, "hf_hub_download", download)
    loading.resolved_commit.cache_clear()
    assert model_fingerprint(ModelSource(HUB_ID)) == f"{HUB_ID}@{COMMIT}"
    assert model_fingerprint(ModelSource(HUB_ID, "v2")) == f"{HUB_ID}@{'f' * 40}"
    # A pinned commit needs no lookup; a local directory is fingerprinted by its files, as before.
    assert model_fingerprint(ModelSource(HUB_ID, "a" * 40)) == f"{HUB_ID}@{'a' * 40}"
    assert asked == [(HUB_ID, None), (HUB_ID, "v2")]
    assert model_fingerprint(tiny_model_path) == model_fingerprint(ModelSource(tiny_model_path, "ignored"))
    assert model_fingerprint(tiny_model_path).startswith(Path(tiny_model_path).name + ":")


def test_an_unresolvable_revision_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(repo_id: str, filename: str, revision: str | None = None) -> str:
        raise OSError("We couldn't connect to the hub.\nCheck your connection.")

    monkeypatch.setattr(loading, "hf_hub_download", offline)
    loading.resolved_commit.cache_clear()
    expected = r"^model some-org/tiny-math@v9: cannot resolve the revision to a commit \(We couldn't connect"
    with pytest.raises(ConfigError, match=expected) as error:
        model_fingerprint(ModelSource(HUB_ID, "v9"))
    assert "\n" not in str(error.value)


def test_every_from_pretrained_goes_through_the_model_loader() -> None:
    """The loader passes the revision and trust_remote_code; a from_pretrained elsewhere would bypass it."""
    loader = PROJECT_ROOT / "src" / "mindgap" / "models" / "loading.py"
    bypasses = [
        f"{path.relative_to(PROJECT_ROOT)}:{number}"
        for path in sorted((PROJECT_ROOT / "src").rglob("*.py"))
        if path != loader
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        # A PEFT adapter is loaded onto a model the loader built; a GGUF file is converted once into the
        # local directory the loader then loads.
        if re.search(r"\.from_pretrained\(", line) and not re.search(r"PeftModel\.from_pretrained|gguf_file=", line)
    ]
    assert bypasses == []
