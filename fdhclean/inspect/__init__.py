"""Reading a cleaning run: summary and plots, contact sheets, revote, export and compare.

Everything here starts from a refine output split `OUT/S` (its parquet report, run record and
cleaned shards); nothing reruns the estimator (style.md point 3).
"""
