"""The benchmarks an evaluation runs on: data configs (conf/data/*.yaml) and their problems.

Each benchmark is a data config whose fields are mapped explicitly. ``<name>_hub`` configs load the
same benchmark from the hub under the same name (so their results compare with the local copy's);
the shared files under ``data_root`` need no network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mindgap.config import MindgapConfig
from mindgap.data.config import DataConfig
from mindgap.data.sources import data_config, load_problems
from mindgap.errors import ConfigError, DataError
from mindgap.records import Problem


@dataclass(frozen=True)
class Benchmark:
    # The data config's name: the key of results, directories and tables.
    name: str
    data: DataConfig
    problems: list[Problem]


def benchmark_configs(config: MindgapConfig) -> list[DataConfig]:
    """The data configs ``eval.benchmarks`` names (a name equal to ``data.name`` takes the ``data`` config).

    A toy benchmark is drawn from the world of the toy data the run trains on, so that an override of
    ``data.toy.world`` (its target distribution, say) moves the test sets with the fine-tuning set.
    """
    names = config.eval.benchmarks
    if names is None:
        return [config.data]
    configs = [config.data if name == config.data.name else data_config(name) for name in names]
    if config.data.toy is None:
        return configs
    world = config.data.toy.world
    return [
        dataclasses.replace(data, toy=dataclasses.replace(data.toy, world=world)) if data.toy is not None else data
        for data in configs
    ]


def load_benchmarks(config: MindgapConfig) -> list[Benchmark]:
    """Every benchmark's problems (first ``eval.limit``, else ``data.limit``), loaded before any sampling."""
    benchmarks: list[Benchmark] = []
    for data in benchmark_configs(config):
        if any(benchmark.name == data.name for benchmark in benchmarks):
            raise ConfigError(f"eval.benchmarks: two configs load the benchmark {data.name!r} (e.g. its _hub copy)")
        limited = dataclasses.replace(data, limit=config.eval.limit or data.limit)
        problems = load_problems(limited, config.data_root, cache_dir=config.cache_dir).problems
        if not problems:
            raise DataError(f"benchmark {data.name}: no problems to evaluate")
        benchmarks.append(Benchmark(data.name, limited, problems))
    return benchmarks
