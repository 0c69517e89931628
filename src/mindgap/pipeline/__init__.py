"""The pipeline: every variant rewritten, trained and evaluated (``app``), the report (``report``), and its
figures and seed tables (``analysis``).
"""
