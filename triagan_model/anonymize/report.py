"""The per-person report table (one row per person per frame; anonymize-spec 4.8)."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    "input",
    "frame",
    "person",
    "track",
    "status",
    "fallback",
    "score",
    "mask_pixels",
    "box",
    "expanded_box",
    "keypoints",
    "identity_key",
    "centre_index",
    "psi",
    "layer",
)
STATUSES = ("anonymized", "held", "too-small")


def persons_table(rows: list[dict[str, Any]]):
    """A pandas DataFrame with the report's columns, typed (nullable ints) even when empty."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for c in ("frame", "person", "track", "mask_pixels", "centre_index", "layer"):
        df[c] = df[c].astype("Int64")
    for c in ("score", "psi"):
        df[c] = df[c].astype("Float64")
    return df
