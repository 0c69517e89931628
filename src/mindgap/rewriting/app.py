"""mindgap-rewrite: rewrite an expert data set with the model itself.

The stage's code is imported by the job, once the config is valid (see ``mindgap.app``).
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from mindgap import publish
from mindgap.app import run_app, run_cli, stage_tracker
from mindgap.config import MindgapConfig, register_configs
from mindgap.paths import CONFIG_DIR

if TYPE_CHECKING:
    from mindgap.rewriting.run import StageResult
    from mindgap.tracking import Tracker

register_configs()

SAMPLE_ROWS = 32
SHARD_STATUS = "shard_status.json"


def rewrite(config: MindgapConfig, output_dir: Path, label: str | None = None) -> Path | None:
    """Rewrite into ``output_dir/{dataset,manifest.json}``; a shard job (rewrite.shard_index) returns None.

    ``label`` names the tracker's run among a pipeline's rewrites (the rounds of a variant).

    Finished work is reused: the stage keeps its chunks and merged datasets in ``rewrite.work_dir``
    under a fingerprint of everything that decides the result.
    """
    from mindgap.rewriting.run import DATASET_DIR, run_rewrite_stage

    result = run_rewrite_stage(config)
    output_dir.mkdir(parents=True, exist_ok=True)
    if result.dataset_dir is None:
        publish.write_json(output_dir / SHARD_STATUS, result.manifest, indent=2)
        status = result.manifest
        print(
            f"mindgap-rewrite: shard {status['shard_index']} of {status['num_shards']} done; "
            f"{status['chunks_finished_all_shards']}/{status['chunks_total']} chunks of all shards finished. "
            "Merge with the same overrides and rewrite.merge_only=true",
            flush=True,
        )
        return None
    _publish(result, output_dir)
    if not result.reused:
        _track(config, output_dir, result, label)
    return output_dir / DATASET_DIR


def _publish(result: StageResult, output_dir: Path) -> None:
    """Copy the merged dataset into the run's output directory, unless the same one is already there.

    The old manifest goes first, so that no crash leaves it beside another dataset; the new one comes last.
    """
    from mindgap.rewriting.run import DATASET_DIR, MANIFEST

    assert result.dataset_dir is not None
    manifest_path = output_dir / MANIFEST
    if (
        manifest_path.exists()
        and (output_dir / DATASET_DIR).is_dir()
        and json.loads(manifest_path.read_text()).get("fingerprint") == result.manifest["fingerprint"]
    ):
        return
    publish.clean_stale_staging(output_dir)
    publish.remove(manifest_path)
    with publish.staged_dir(output_dir / DATASET_DIR) as staging:
        shutil.copytree(result.dataset_dir, staging, dirs_exist_ok=True)
    publish.write_json(manifest_path, result.manifest, indent=2)


def _track(config: MindgapConfig, output_dir: Path, result: StageResult, label: str | None) -> None:
    manifest = result.manifest
    tracker = stage_tracker(config, output_dir, "rewrite", label=label)
    try:
        metrics = {
            f"rewrite/{stage}/{key}": value
            for stage, stats in manifest["stages"].items()
            for key, value in stats.items()
        }
        metrics |= {f"rewrite/count/{source}": count for source, count in manifest["counts_per_source"].items()}
        metrics |= {f"rewrite/verifier/{key}": count for key, count in manifest["verifier"].items()}
        metrics |= {
            "rewrite/tokens_generated": manifest["tokens_generated"],
            "rewrite/token_savings": manifest["token_savings"],
        }
        tracker.log_metrics(metrics)
        if manifest.get("rl_agent"):
            _track_rl_agent(tracker, manifest["rl_agent"])
        tracker.log_table(
            "rewrite/samples",
            ["id", "source", "answer", "response"],
            [[row["id"], row["source"], row["answer"], row["response"]] for row in _sample(result.sample_rows)],
        )
    finally:
        tracker.finish()


def _track_rl_agent(tracker: Tracker, summary: dict) -> None:
    """The GRPO training of the RL rewriter, step by step (loss, KL, each reward term), and its mean rewards."""
    log = Path(summary["training_log"])
    if log.exists():
        for entry in json.loads(log.read_text())["log_history"]:
            values = {
                f"rewrite/rl_agent/{key}": value
                for key, value in entry.items()
                if key != "step" and isinstance(value, int | float)
            }
            tracker.log_metrics(values, step=entry["step"])
    tracker.log_metrics({f"rewrite/rl_agent/mean/{term}": value for term, value in summary["reward_means"].items()})


def _sample(rows: list[dict]) -> list[dict]:
    """Up to SAMPLE_ROWS records, taken in turn from each source so that rare sources show up."""
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    interleaved = [row for group in itertools.zip_longest(*by_source.values()) for row in group if row is not None]
    return interleaved[:SAMPLE_ROWS]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="rewrite")
def _hydra_main(cfg: DictConfig) -> None:
    run_app(cfg, MindgapConfig, rewrite, "rewrite")


def main() -> None:
    run_cli(_hydra_main, "rewrite")


if __name__ == "__main__":
    main()
