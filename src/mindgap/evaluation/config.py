"""The ``eval`` section and mindgap-compare's schema: benchmarks, sampling, metrics and intervals."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from mindgap.checks import require_label, require_positive
from mindgap.errors import ConfigError
from mindgap.generation.config import SamplingConfig
from mindgap.paths import CONFIG_DIR

# The Mind the Gap / DFT evaluation suite (their tables average these five).
PAPER_BENCHMARKS = ("math500", "minerva_math", "olympiadbench", "aime24", "amc23")


@dataclass
class BootstrapConfig:
    """Percentile bootstrap over problems: confidence intervals, and paired differences between models."""

    # Resamples of each benchmark's problems.
    replicates: int = 1000
    # Coverage of the intervals.
    confidence: float = 0.95
    # Seed of the resampling. Every model gets the same resampled problems, so differences are paired.
    seed: int = 0

    def validate(self, where: str) -> None:
        require_positive(f"{where}.replicates", self.replicates)
        if not 0 < self.confidence < 1:
            raise ConfigError(f"{where}.confidence={self.confidence} must be in (0, 1)")


@dataclass
class EvalConfig:
    """Evaluation: sampled answers on math benchmarks, scored by the verifier (avg@n, pass@k, maj@n)."""

    # Data configs (conf/data/<name>.yaml) to evaluate; <name>_hub loads the same benchmark from the hub.
    # The default is the Mind the Gap / DFT suite; null evaluates ``data``.
    benchmarks: list[str] | None = field(default_factory=lambda: list(PAPER_BENCHMARKS))
    # Keep only the first N problems of each benchmark.
    limit: int | None = None
    # n samples per problem. The default is the papers' protocol: avg@16 at T=1, top-p 1, 4096 new tokens.
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(n=16, temperature=1.0, top_p=1.0, max_tokens=4096)
    )
    # Values of k for the unbiased pass@k, each at most sampling.n; null: k = sampling.n.
    pass_k: list[int] | None = None
    # Models to evaluate: each a Hugging Face model directory, a training run's output directory (its
    # model/), a Lightning checkpoint (.ckpt, exported on the fly) or a hub id. Empty evaluates ``model``.
    models: list[str] = field(default_factory=list)
    # One label per entry of models (result directories, table rows); empty derives them from the paths.
    labels: list[str] = field(default_factory=list)
    # Label of the model the others are compared with when there are several; null: the first.
    baseline: str | None = None
    # The model a checkpoint was fine-tuned from (hub id or directory); needed only when neither the
    # checkpoint nor its run's .hydra/config.yaml records it. When set, it wins over what they record.
    base_model: str | None = None
    # Problems sampled and committed to the cache together: the unit of resumption.
    chunk_size: int = 64
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    # Problems per benchmark whose first sample goes to the samples table (W&B, CSV).
    table_problems: int = 16

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        require_positive("eval.limit", self.limit)
        self.sampling.validate("eval.sampling")
        require_positive("eval.chunk_size", self.chunk_size)
        require_positive("eval.table_problems", self.table_problems, allow_zero=True)
        self.bootstrap.validate("eval.bootstrap")
        if self.benchmarks is not None:
            if not self.benchmarks:
                raise ConfigError("eval.benchmarks is empty: name at least one benchmark (or null to evaluate data)")
            known = sorted(path.stem for path in (CONFIG_DIR / "data").glob("*.yaml"))
            for name in self.benchmarks:
                if name not in known:
                    raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(known)}")
            if len(set(self.benchmarks)) != len(self.benchmarks):
                raise ConfigError(f"eval.benchmarks={list(self.benchmarks)} names a benchmark twice")
        for k in self.pass_k or []:
            if not 1 <= k <= self.sampling.n:
                raise ConfigError(f"eval.pass_k: k={k} must be in [1, eval.sampling.n={self.sampling.n}]")
        if self.labels and len(self.labels) != len(self.models):
            raise ConfigError(f"eval.labels has {len(self.labels)} entries for {len(self.models)} eval.models")
        for label in self.labels:
            require_label(f"eval.labels: {label!r}", label)
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"eval.labels={list(self.labels)} has duplicates")
        if self.baseline is not None and self.labels and self.baseline not in self.labels:
            raise ConfigError(f"eval.baseline={self.baseline!r} is not one of eval.labels: {', '.join(self.labels)}")


@dataclass
class CompareConfig:
    """mindgap-compare: the side-by-side table of results directories written by mindgap-eval."""

    # Results directories (each holds results.json and <benchmark>/problems.jsonl).
    results: list[str] = MISSING
    # One label per results directory; empty takes each results.json's label.
    labels: list[str] = field(default_factory=list)
    # Label of the variant the others are compared with; null: the first.
    baseline: str | None = None
    # Where comparison.md, comparison.csv and comparison.json go; printed at the end.
    output_dir: str = MISSING
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)

    def __post_init__(self) -> None:
        if not self.results:
            raise ConfigError("results: name at least one results directory")
        if self.labels and len(self.labels) != len(self.results):
            raise ConfigError(f"labels has {len(self.labels)} entries for {len(self.results)} results directories")
        for label in self.labels:
            require_label(f"labels: {label!r}", label)
        self.bootstrap.validate("bootstrap")
