"""The rewriting stage as a resumable, shardable pipeline of chunks.

Work lives in ``rewrite.work_dir/<fingerprint>/``, where the fingerprint hashes everything
that decides the result (model, data, prompts, sampling, seed) and nothing that decides who
computes it (shards). Problems are cut into fixed chunks; each chunk is generated, then
rescored, and each result is committed as one file by an atomic rename (mindgap.publish), so a
run killed at any moment loses at most the chunks in flight. Every chunk's sampling seeds are
functions of the chunk's index, so a resumed or sharded run writes exactly what an uninterrupted
one does. The merge writes ``dataset/`` (Arrow) and, last, ``manifest.json``.

Jobs sharing the work dir (shards, a sweep's variants, a job started twice) split the work: a
chunk is computed under its lock in ``locks/`` (mindgap.locks), a job skips chunks that a live job
holds, and waits at the end for those to finish; the merge runs under the fingerprint's lock.

One module past the usual size: the chunk lifecycle (generate, rescore, merge, publish) and its
locks are one contract, read top to bottom; the strategies, stages and rescoring already live beside it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from tqdm.auto import tqdm

from mindgap import publish
from mindgap.config import MindgapConfig
from mindgap.data.sources import SkippedRecord, load_problems
from mindgap.errors import DataError, MindgapError
from mindgap.fingerprints import config_fingerprint, problems_fingerprint, verifier_fingerprint
from mindgap.generation.base import Generator
from mindgap.generation.factory import make_generator
from mindgap.locks import Lock, holder
from mindgap.models.loading import ModelSource, load_tokenizer, model_fingerprint
from mindgap.models.resolve import resolve_model
from mindgap.prompts import prompts_fingerprint
from mindgap.records import FEATURES, SOURCES, Problem, Record
from mindgap.rewriting import rl_agent
from mindgap.rewriting.rescore import Gaps, Rescorer, without_nonfinite
from mindgap.rewriting.stages import BatchVerifier, StageStats, expert_record
from mindgap.rewriting.strategies import REFERENCE_REWRITE_STRATEGIES, make_rewriter, uses_generator
from mindgap.verification.verifier import Verifier

DATASET_DIR = "dataset"
MANIFEST = "manifest.json"
GENERATED = "generated"
RESCORED = "rescored"
LOCKS = "locks"
MERGE_LOCK = "merge.lock"
# How often a job that waits for chunks held by other jobs looks again.
WAIT_POLL_S = 1.0
# Bump when the chunk files change meaning, so old work is never mixed with new.
CHUNK_FORMAT = 2
# Keys that decide which job computes a chunk, not what the chunk holds.
SCHEDULING_KEYS = ("num_shards", "shard_index", "merge_only", "work_dir", "strict", "lock", "lock_stale_s")
# Rewrite settings read by one strategy only (key -> strategy): fingerprinted only under that strategy, so that
# adding or changing them leaves the other strategies' finished datasets valid.
STRATEGY_SETTINGS = {"sdft": "sdft", "rl_agent": "rl_agent"}


@dataclass
class StageResult:
    """Where the merged dataset is (None for a shard job) and what the manifest says."""

    dataset_dir: Path | None
    manifest: dict[str, Any]
    # True when an identical finished dataset was found and nothing was computed.
    reused: bool
    sample_rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _usable_problems(
    problems: list[Problem], strict: bool, skipped: list[SkippedRecord], verifier: Verifier
) -> list[Problem]:
    """The problems with an expert solution and a gold answer the (configured) verifier can read."""
    usable = []
    gold_reasons = verifier.gold_problems([problem.answer for problem in problems])
    for problem, gold_reason in zip(problems, gold_reasons, strict=True):
        reason = None
        if not problem.expert_solution:
            reason = f"record {problem.id}: empty expert solution (data.fields.solution)"
        elif gold_reason is not None:
            reason = f"record {problem.id}: {gold_reason} (data.fields.answer)"
        if reason is None:
            usable.append(problem)
        elif strict:
            raise DataError(reason)
        else:
            skipped.append(SkippedRecord(id=problem.id, reason=reason))
    return usable


def stage_fingerprint(config: MindgapConfig, problems: list[Problem], model: ModelSource) -> str:
    """Identifies what the stage computes: the same fingerprint means the same dataset."""
    unread = {key for key, strategy in STRATEGY_SETTINGS.items() if strategy != config.rewrite.strategy}
    rewrite = {
        key: value
        for key, value in dataclasses.asdict(config.rewrite).items()
        if key not in SCHEDULING_KEYS and key not in unread
    }
    inputs = {
        "chunk_format": CHUNK_FORMAT,
        "model": dataclasses.asdict(config.model),
        "weights": model_fingerprint(model, config.cache_dir),
        "problems": problems_fingerprint(problems),
        "generator": dataclasses.asdict(config.generator),
        "rewrite": rewrite,
        "prompt_type": config.prompt_type,
        "prompts": prompts_fingerprint(config.prompt_type),
        "verifier": verifier_fingerprint(config.verifier),
        "seed": config.seed,
    }
    return config_fingerprint(inputs)


def _chunk_file(work: Path, phase: str, index: int) -> Path:
    return work / phase / f"chunk-{index:05d}.json"


class _Progress:
    """A progress bar over problems with the running composition of the kept sources.

    Next to the acceptance (problems with a kept model response) it counts the correct responses
    rejected because they were cut off at max_tokens, all stages together.
    """

    def __init__(self, total: int, done: int, description: str, sources: tuple[str, ...]):
        self.bar = tqdm(total=total, initial=done, desc=description, unit="problem", dynamic_ncols=True)
        self.sources: dict[str, int] = dict.fromkeys(sources, 0)
        self.problems = 0
        self.truncated = 0

    def update(self, problems: int, problems_per_source: dict[str, set[str]], stages: dict[str, StageStats]) -> None:
        for source, ids in problems_per_source.items():
            self.sources[source] = self.sources.get(source, 0) + len(ids)
        self.problems += problems
        self.truncated += sum(stats.rejected_truncated for stats in stages.values())
        by_model = sum(count for source, count in self.sources.items() if source != "expert")
        acceptance = f"{by_model / max(1, self.problems):.0%}"
        self.bar.set_postfix({**self.sources, "acceptance": acceptance, "truncated": self.truncated})
        self.bar.update(problems)

    def close(self) -> None:
        self.bar.close()


class RewriteStage:
    """One invocation of the stage: plans the chunks, computes this job's missing ones, merges."""

    def __init__(self, config: MindgapConfig):
        self.config = config
        self.started = time.time()
        loaded = load_problems(config.data, config.data_root, strict=config.rewrite.strict)
        self.skipped = loaded.skipped
        with Verifier.from_config(config.verifier) as verifier:
            self.problems = _usable_problems(loaded.problems, config.rewrite.strict, self.skipped, verifier)
        if not self.problems:
            raise DataError(f"data {config.data.name}: no usable problems to rewrite")
        self.model = resolve_model(config.model, config.cache_dir, config.data_root)
        self.fingerprint = stage_fingerprint(config, self.problems, self.model)
        self.work = Path(config.rewrite.work_dir) / self.fingerprint
        size = config.rewrite.chunk_size
        self.chunks = [self.problems[start : start + size] for start in range(0, len(self.problems), size)]
        shard = config.rewrite.shard_index
        self.mine = [i for i in range(len(self.chunks)) if shard is None or i % config.rewrite.num_shards == shard]
        self.final_phase = RESCORED if config.rewrite.rescore else GENERATED
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model)
        return self._tokenizer

    def run(self) -> StageResult:
        if (self.work / MANIFEST).exists():
            manifest = json.loads((self.work / MANIFEST).read_text())
            return StageResult(self.work / DATASET_DIR, manifest, reused=True)
        rewrite = self.config.rewrite
        computed = 0
        if not rewrite.merge_only:
            computed = self._compute()
        if rewrite.shard_index is not None:
            return StageResult(None, self._shard_status(computed), reused=False)
        missing = [i for i in range(len(self.chunks)) if not _chunk_file(self.work, self.final_phase, i).exists()]
        if missing:
            shards = sorted({i % rewrite.num_shards for i in missing})
            raise MindgapError(
                f"rewrite: {len(missing)} of {len(self.chunks)} chunks are not finished (shards {shards} of "
                f"{rewrite.num_shards}, work dir {self.work}); run those shards, or rerun without merge_only"
            )
        with self._lock(MERGE_LOCK):
            if (self.work / MANIFEST).exists():  # another job merged while this one waited
                return StageResult(self.work / DATASET_DIR, json.loads((self.work / MANIFEST).read_text()), False)
            return self._merge(computed)

    # ------------------------------------------------------------------ phases

    def _lock(self, name: str) -> Lock:
        rewrite = self.config.rewrite
        return Lock(self.work / LOCKS / name, rewrite.lock, rewrite.lock_stale_s)

    @contextmanager
    def _claimed(self, phase: str, index: int) -> Iterator[bool]:
        """True while this job holds the chunk's lock and the chunk is still to be computed.

        False when a live job computes it (its lock is held) or it was committed meanwhile.
        """
        lock = self._chunk_lock(phase, index)
        if not lock.acquire(blocking=False):
            yield False
            return
        try:
            yield not _chunk_file(self.work, phase, index).exists()
        finally:
            lock.release()

    def _compute(self) -> int:
        """Compute this job's unfinished chunks, then wait for those other jobs hold; returns chunks generated."""
        for phase in (GENERATED, RESCORED):
            publish.clean_stale_staging(self.work / phase)
        computed, announced = 0, False
        while True:
            computed += self._generate()
            if self.config.rewrite.rescore:
                self._rescore()
            unfinished = [i for i in self.mine if not _chunk_file(self.work, self.final_phase, i).exists()]
            if not unfinished:
                return computed
            if not announced:
                holders = {
                    f"{found['host']}:{found['pid']}"
                    for path in (self.work / LOCKS).glob("*.lock")
                    if (found := holder(path)) is not None
                }
                print(
                    f"rewrite: waiting for {len(unfinished)} chunks that other jobs compute "
                    f"(lock holders {', '.join(sorted(holders)) or 'unknown'}; work dir {self.work})",
                    flush=True,
                )
                announced = True
            # A holder that dies releases its lock (or leaves a stale one), and the next pass takes its chunk.
            time.sleep(WAIT_POLL_S)

    def _pending(self, phase: str, ready: Callable[[int], bool] = lambda index: True) -> list[int]:
        """Chunks to compute now: not committed, and not held by a live job (so that a job waiting for
        others' chunks loads no model for them)."""
        return [
            i for i in self.mine if ready(i) and not _chunk_file(self.work, phase, i).exists() and self._free(phase, i)
        ]

    def _free(self, phase: str, index: int) -> bool:
        lock = self._chunk_lock(phase, index)
        if not lock.acquire(blocking=False):
            return False
        lock.release()
        return True

    def _chunk_lock(self, phase: str, index: int) -> Lock:
        return self._lock(f"{phase}-{index:05d}.lock")

    def _generate(self) -> int:
        pending = self._pending(GENERATED)
        if not pending:
            return 0
        strategy = self.config.rewrite.strategy
        generator: Generator | None = None
        progress: _Progress | None = None
        computed = 0
        try:
            with Verifier(self.config.verifier.workers, self.config.verifier.timeout_s) as verifier:
                if uses_generator(strategy):
                    generator = make_generator(
                        self.config.generator, self._generation_model(verifier), self.config.model.dtype
                    )
                total = sum(len(self.chunks[i]) for i in self.mine)
                done = total - sum(len(self.chunks[i]) for i in pending)
                sources = (
                    ("rewritten", "expert")
                    if strategy in REFERENCE_REWRITE_STRATEGIES
                    else ("self", "guided", "expert")
                )
                progress = _Progress(total, done, "rewrite", sources)
                rewriter = make_rewriter(
                    self.config.rewrite,
                    generator,
                    verifier,
                    self.tokenizer if self.config.prompt_type == "chat" else None,
                    self.config.prompt_type,
                )
                for index in pending:
                    with self._claimed(GENERATED, index) as claimed:
                        if not claimed:
                            continue
                        started, before = time.time(), verifier.counters.as_dict()
                        outcome = rewriter.run(self.chunks[index], seed=self._chunk_seed(index))
                        after = verifier.counters.as_dict()
                        payload = {
                            "index": index,
                            "problem_ids": [problem.id for problem in self.chunks[index]],
                            "records": [record.to_dict() for record in outcome.records],
                            "stages": {name: dataclasses.asdict(stats) for name, stats in outcome.stages.items()},
                            "dropped": outcome.dropped,
                            "verifier": {key: after[key] - before.get(key, 0) for key in after},
                            "wall_time_s": time.time() - started,
                            "writer": {"host": publish.HOST, "pid": os.getpid()},
                        }
                        publish.write_json(_chunk_file(self.work, GENERATED, index), payload)
                        computed += 1
                    progress.update(len(self.chunks[index]), _problems_per_source(outcome.records), outcome.stages)
        finally:
            if progress is not None:
                progress.close()
            if generator is not None:
                generator.close()
        return computed

    def _generation_model(self, verifier: BatchVerifier) -> ModelSource | str:
        """The weights the strategy samples from: the backbone, or for rl_agent the trained rewriter (merged)."""
        if self.config.rewrite.strategy != "rl_agent":
            return self.model
        return str(rl_agent.trained_rewriter(self.config, self.problems, self.model, verifier, self.work))

    def _behavior_models(self) -> dict[str, ModelSource | str]:
        """Per source, the model that generated its records, which rescoring scores them with.

        Expert text is scored by the backbone (pi_0 under the standard prompt); model responses by the
        model that sampled them: the backbone, or under rl_agent the trained rewriter (backbone + LoRA,
        merged) under the rewrite prompt, so that their weights are against what the data was drawn from.
        """
        models: dict[str, ModelSource | str] = {source: self.model for source in SOURCES}
        if self.config.rewrite.strategy == "rl_agent":
            merged = rl_agent.merged_rewriter(self.work)
            if merged is None:
                raise MindgapError(
                    f"rewrite: the chunks in {self.work} were generated by the RL rewriter, but its merged model "
                    f"({self.work / rl_agent.AGENT_DIR / rl_agent.MERGED_DIR}) is gone; delete that dir and rerun"
                )
            models["rewritten"] = str(merged)
        return models

    def _expert_records(self, removed: list[Record]) -> list[Record]:
        """The fallback records of the problems of ``removed`` (keeping their attempts), under the standard prompt."""
        problems = {problem.id: problem for problem in self.problems}
        tokenizer = self.tokenizer if self.config.prompt_type == "chat" else None
        return [
            expert_record(problems[record.id], record.attempts, self.config.prompt_type, tokenizer)
            for record in removed
        ]

    def _chunk_seed(self, index: int) -> int:
        return self.config.seed * 1_000_003 + index

    def _rescore(self) -> None:
        pending = self._pending(RESCORED, lambda i: _chunk_file(self.work, GENERATED, i).exists())
        if not pending:
            return
        behavior_models = self._behavior_models()
        # One rescorer per distinct behaviour model, loaded when a chunk first needs it.
        rescorers: dict[str, Rescorer] = {}

        def rescorer_of(source: str) -> Rescorer:
            model = behavior_models[source]
            key = model_fingerprint(model)
            if key not in rescorers:
                rescorers[key] = Rescorer(
                    model, self.config.model.dtype, self.tokenizer, self.config.rewrite.rescore_batch_size
                )
            return rescorers[key]

        try:
            for index in tqdm(pending, desc="rescore", unit="chunk", dynamic_ncols=True):
                with self._claimed(RESCORED, index) as claimed:
                    if not claimed:
                        continue
                    payload = json.loads(_chunk_file(self.work, GENERATED, index).read_text())
                    started = time.time()
                    records = [Record.from_dict(row) for row in payload["records"]]
                    gaps = Gaps()
                    for source in sorted({record.source for record in records}):
                        of_source = [record for record in records if record.source == source]
                        gaps.update(rescorer_of(source).rescore(of_source))
                    # A non-finite log-prob would fail every merge (and training): such records never reach a chunk.
                    finite = without_nonfinite(
                        records, self._expert_records, lambda experts: rescorer_of("expert").rescore(experts)
                    )
                    payload["logprob_gap"] = gaps.largest
                    payload["logprob_gap_infinite"] = gaps.nonfinite
                    payload["nonfinite_logprobs"] = {
                        "removed": finite.removed,
                        "fell_back_to_expert": finite.fell_back_to_expert,
                        "dropped": len(finite.dropped),
                    }
                    payload["dropped"].update(finite.dropped)
                    payload["records"] = [record.to_dict() for record in finite.records]
                    payload["wall_time_s"] += time.time() - started
                    payload["rescorer"] = {"host": publish.HOST, "pid": os.getpid()}
                    publish.write_json(_chunk_file(self.work, RESCORED, index), payload)
        finally:
            for rescorer in rescorers.values():
                rescorer.close()

    # ------------------------------------------------------------------ results

    def _shard_status(self, computed: int) -> dict[str, Any]:
        done = sum(_chunk_file(self.work, self.final_phase, i).exists() for i in range(len(self.chunks)))
        return {
            "fingerprint": self.fingerprint,
            "shard_index": self.config.rewrite.shard_index,
            "num_shards": self.config.rewrite.num_shards,
            "chunks_of_shard": len(self.mine),
            "chunks_computed": computed,
            "chunks_finished_all_shards": done,
            "chunks_total": len(self.chunks),
            "work_dir": str(self.work),
        }

    def _chunk_payloads(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self.chunks)):
            yield json.loads(_chunk_file(self.work, self.final_phase, index).read_text())

    def _merge(self, computed: int) -> StageResult:
        rows: list[dict[str, Any]] = []
        stages: dict[str, StageStats] = {}
        dropped: dict[str, str] = {}
        verifier: dict[str, int] = {}
        gaps: dict[str, float] = {}
        infinite_gaps: dict[str, int] = {}
        nonfinite: dict[str, Any] = {"removed": {}, "fell_back_to_expert": 0, "dropped": 0}
        compute_time = 0.0
        for index, payload in enumerate(self._chunk_payloads()):
            if payload["problem_ids"] != [problem.id for problem in self.chunks[index]]:
                raise MindgapError(f"rewrite: chunk {index} in {self.work} holds other problems; delete that dir")
            # Through Record, so that chunks written before a field was added get its default.
            rows.extend(Record.from_dict(row).to_dict() for row in payload["records"])
            for name, values in payload["stages"].items():
                stages.setdefault(name, StageStats()).add(StageStats(**values))
            dropped.update(payload["dropped"])
            for key, value in payload["verifier"].items():
                verifier[key] = verifier.get(key, 0) + value
            for source, gap in payload.get("logprob_gap", {}).items():
                gaps[source] = max(gaps.get(source, 0.0), gap)
            for source, count in payload.get("logprob_gap_infinite", {}).items():
                infinite_gaps[source] = infinite_gaps.get(source, 0) + count
            for key, value in payload.get("nonfinite_logprobs", {}).items():
                if isinstance(value, dict):
                    for source, count in value.items():
                        nonfinite[key][source] = nonfinite[key].get(source, 0) + count
                else:
                    nonfinite[key] += value
            compute_time += payload["wall_time_s"]

        counts = source_counts(rows)
        tokens_generated = sum(stats.tokens_generated for stats in stages.values())
        tokens_fixed_n = sum(stats.tokens_fixed_n for stats in stages.values())
        manifest = {
            "fingerprint": self.fingerprint,
            "records": len(rows),
            "problems": len(self.problems),
            "counts_per_source": counts,
            "stages": {name: stats.as_dict() for name, stats in stages.items()},
            "tokens_generated": tokens_generated,
            "tokens_fixed_n": round(tokens_fixed_n, 1),
            "token_savings": 1 - tokens_generated / tokens_fixed_n if tokens_fixed_n else 0.0,
            "verifier": verifier,
            # null for a source with an infinite gap; logprob_gap_infinite counts its records (strict JSON).
            "logprob_gap_recorded_vs_rescored": {
                source: None if source in infinite_gaps else gap
                for source, gap in {**dict.fromkeys(infinite_gaps, None), **gaps}.items()
            },
            "logprob_gap_infinite": infinite_gaps,
            "nonfinite_logprobs": nonfinite,
            "dropped": dropped,
            "skipped": [dataclasses.asdict(skip) for skip in self.skipped],
            "chunks": {"total": len(self.chunks), "computed_by_this_run": computed, "size": len(self.chunks[0])},
            # Generation and rescoring time summed over chunks, across resumed runs and shard jobs.
            "compute_time_s": round(compute_time, 3),
            "wall_time_s": round(time.time() - self.started, 3),
            "model": {
                "path": self.model.path,
                "revision": self.model.revision,
                "fingerprint": model_fingerprint(self.model),
            },
            "data": {"name": self.config.data.name, "fingerprint": problems_fingerprint(self.problems)},
            "config": dataclasses.asdict(self.config),
        }
        if self.config.rewrite.rescore:
            # The model whose log-probs each source's rescored_logprobs (its behaviour policy) are.
            behavior_models = self._behavior_models()
            manifest["behavior_models"] = {source: model_fingerprint(behavior_models[source]) for source in counts}
        if self.config.rewrite.strategy == "rl_agent":
            manifest["rl_agent"] = rl_agent.training_summary(self.work)
        # (Under the merge lock, with no manifest: a dataset/ already there is what a killed merge left.)
        dataset_dir = commit_dataset(self.work, rows, manifest)
        return StageResult(dataset_dir, manifest, reused=False, sample_rows=rows)


def commit_dataset(directory: Path, rows: list[dict[str, Any]], manifest: dict[str, Any]) -> Path:
    """Write ``directory/{dataset,manifest.json}``: a stale manifest goes first, the dataset is staged privately and
    renamed into place, and the manifest comes last and marks it done. Returns the dataset's directory."""
    publish.clean_stale_staging(directory)
    publish.remove(directory / MANIFEST)
    with publish.staged_dir(directory / DATASET_DIR) as staging:
        Dataset.from_list(rows, features=FEATURES).save_to_disk(str(staging))
    publish.write_json(directory / MANIFEST, manifest, indent=2)
    return directory / DATASET_DIR


def source_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Records per source, in the order the sources first appear."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["source"]] = counts.get(row["source"], 0) + 1
    return counts


def _problems_per_source(records: list[Record]) -> dict[str, set[str]]:
    """Ids of the problems with a kept record of each source."""
    by_source: dict[str, set[str]] = {}
    for record in records:
        by_source.setdefault(record.source, set()).add(record.id)
    return by_source


def run_rewrite_stage(config: MindgapConfig) -> StageResult:
    """Compute this job's chunks and, unless it is one shard of several, the merged dataset."""
    return RewriteStage(config).run()
