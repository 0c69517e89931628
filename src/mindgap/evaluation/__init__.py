"""Evaluation on math benchmarks: sampling and scoring (``run``), metrics, comparison tables (``compare``),
the apps mindgap-eval (``app``) and mindgap-compare (``compare_app``)."""
