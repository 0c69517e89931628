"""How close each training set's responses are to the initial model, and how varied they are, per source.

- alignment: a response's mean per-token NLL under the initial model given the question alone (the RL
  rewriter's alignment input, ``RewardScorer.nll_and_embeddings``). Unlike the rescored log-probs, which
  are under each record's own prompt and behaviour policy (the hint for guided re-solves, the rewriter
  for RL rewrites), it puts every source on one scale: how likely the initial model is to say this
  unprompted;
- diversity: the reward's D, the mean cosine distance (1 - cos) / 2 over the pairs of a source's
  responses, each embedded as the mean of the initial model's last hidden states (one response per
  problem in most sets, so it is across problems);
- distinct-2: the share of word bigrams that are distinct among all of a source's bigrams, a lexical
  view that needs no model (a rewriter that fills one template scores low).

The measures of a dataset are kept beside it (``quality.json``) under its manifest's fingerprint, so
a rerun of the pipeline reuses them and a rewritten dataset gets new ones.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from mindgap import publish
from mindgap.config import MindgapConfig
from mindgap.rewriting.run import MANIFEST

QUALITY_JSON = "quality.json"
# The measures of each source, in the report's column order.
QUALITY_MEASURES = ("records", "alignment_nll", "diversity", "distinct_2")


def mean_pairwise_cosine_distance(embeddings: torch.Tensor) -> float:
    """Mean of (1 - cos) / 2 over the unordered pairs of rows; 0 for fewer than two.

    Exact in O(N H): for unit vectors u_i, the sum of cos over the ordered pairs i != j is |sum u_i|^2 - N.
    """
    count = embeddings.shape[0]
    if count < 2:
        return 0.0
    unit = F.normalize(embeddings.double(), dim=-1)
    mean_cos = (unit.sum(dim=0).square().sum() - count) / (count * (count - 1))
    return float((1 - mean_cos) / 2)


def distinct_ngrams(texts: Sequence[str], n: int = 2) -> float:
    """Distinct word n-grams over all n-grams of ``texts`` (each text's own n-grams); 0 when there are none."""
    grams = [tuple(words[i : i + n]) for words in (text.split() for text in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def source_measures(nll: torch.Tensor, embeddings: torch.Tensor, responses: Sequence[str]) -> dict[str, float]:
    """The measures of one source's responses (``nll`` [N], ``embeddings`` [N, H])."""
    return {
        "records": len(responses),
        "alignment_nll": float(nll.double().mean()) if len(responses) else float("nan"),
        "diversity": mean_pairwise_cosine_distance(embeddings),
        "distinct_2": distinct_ngrams(responses),
    }


def dataset_quality(config: MindgapConfig, dataset: Path) -> dict[str, dict[str, float]]:
    """Source (and "all") -> measures of the saved training set ``dataset`` under the initial model (cached)."""
    from datasets import load_from_disk

    from mindgap.models.loading import load_tokenizer
    from mindgap.models.resolve import resolve_model
    from mindgap.rewriting.rewards import RewardScorer

    model = resolve_model(config.model, config.cache_dir, config.data_root)
    key = {"fingerprint": json.loads((dataset.parent / MANIFEST).read_text())["fingerprint"], "model": model.path}
    cached = dataset.parent / QUALITY_JSON
    if cached.is_file():
        stored = json.loads(cached.read_text())
        if {name: stored[name] for name in key} == key:
            return stored["sources"]

    records = load_from_disk(str(dataset))
    scorer = RewardScorer(
        model, config.model.dtype, load_tokenizer(model), None, config.rewrite.rl_agent.reward_batch_size
    )
    try:
        nll, embeddings = scorer.nll_and_embeddings(list(records["problem"]), list(records["response"]))
    finally:
        scorer.close()
    responses, by_source = list(records["response"]), defaultdict(list)
    for index, source in enumerate(records["source"]):
        by_source[source].append(index)
    sources = {"all": source_measures(nll, embeddings, responses)}
    for source, indices in sorted(by_source.items()):
        sources[source] = source_measures(nll[indices], embeddings[indices], [responses[i] for i in indices])
    publish.write_json(cached, {**key, "sources": sources}, indent=2)
    return sources
