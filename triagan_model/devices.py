"""The one rule for ``--device auto``: CUDA when torch sees a GPU, else the CPU."""

from __future__ import annotations


def resolve_device(name: str = "auto") -> str:
    """``name`` unchanged unless it is "auto" (then "cuda" or "cpu")."""
    if name != "auto":
        return name
    import torch  # here, so that importing this module stays cheap for the CLI

    return "cuda" if torch.cuda.is_available() else "cpu"
