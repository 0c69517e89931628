"""Evaluation on math benchmarks: sampling and scoring (``run``), metrics, and comparison tables.

``compare_results`` is what the pipeline calls to put its variants side by side; ``run_evaluation``
(``mindgap.evaluation.run``) samples and scores models.
"""

from mindgap.evaluation.compare import Comparison, compare_results, load_variant
from mindgap.evaluation.metrics import majority_vote, metric_names, pass_at_k

__all__ = ["Comparison", "compare_results", "load_variant", "majority_vote", "metric_names", "pass_at_k"]
