"""Seeds and RNG states of a training run (part of the resumable state, checkpoint.py).

Initial weights come from a seed shared by every rank; each rank then draws from its own seed
(augmentation, latents, noise). The states of every rank are gathered into the checkpoint so a
resumed run continues each rank's stream exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Any

import torch

from triagan_model.training import distributed


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (run seed, stage index, purpose, rank)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def seed_all(seed: int) -> None:
    # numpy's global RNG is not used by training (the loader has its own seeded RNGs)
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng(info: distributed.DistInfo) -> list:
    """Every rank's RNG state, in rank order (a collective under torchrun)."""
    mine = rng_state()
    if not info.enabled:
        return [mine]
    everyone: list = [None] * info.world_size
    torch.distributed.all_gather_object(everyone, mine)
    return everyone


@contextlib.contextmanager
def rng_untouched():
    """Every DataLoader iterator draws a base seed from the global RNG when it is created; put
    the state back, so that a resumed run draws exactly the numbers an uninterrupted one does."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)
