"""Identity and truncation: one deterministic latent per identity key (anonymize-spec 4.4).

The key is `"{relative path}#p{k}"` for the k-th person of an image (area order) or
`"{relative path}#t{track}"` for a video track. z comes from a torch generator seeded by
sha256("triagan-anon:{seed}:{key}"), so it does not depend on batching or processing order.

Truncation: with centres (`triagan clusters`, or `w_centers.safetensors` beside imported DP2
weights) w' = c + psi (w - c), c the nearest centre (`centre_rule="nearest"`, the paper's) or
`centres[hash(key) % K]` (`"index"`, DP2's `z_idx % K`). Without centres, psi pulls w toward
w_avg; at psi = 0 every person would get the same w_avg (DP2 issue #14), so `resolve_truncation`
refuses that unless multi-modal truncation is explicitly off.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from triagan_model.sampling.truncation import CENTRE_RULES

CENTRES_BESIDE_WEIGHTS = "w_centers.safetensors"


class ConfigError(ValueError):
    """A configuration the user must fix (exit 2)."""


def key_seed(key: str, seed: int) -> int:
    h = hashlib.sha256(f"triagan-anon:{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "little") % 2**63


def latents(keys: list[str], z_dim: int, seed: int) -> torch.Tensor:
    """(len(keys), z_dim) standard normal latents, one per identity key."""
    rows = [torch.randn(z_dim, generator=torch.Generator().manual_seed(key_seed(k, seed)))
            for k in keys]  # fmt: skip
    return torch.stack(rows) if rows else torch.zeros(0, z_dim)


@dataclass(frozen=True)
class TruncationPlan:
    psi: float
    centres: torch.Tensor | None
    centre_rule: str = "nearest"
    source: str | None = None  # where the centres came from


def resolve_truncation(
    weights_dir: str | Path | None,
    *,
    psi: float,
    multi_modal: str = "auto",
    clusters: str | Path | None = None,
    centre_rule: str = "nearest",
) -> TruncationPlan:
    """Decide the truncation; raises ConfigError for the configurations the spec refuses."""
    from triagan_model.sampling.truncation import check_psi, load_centres

    try:
        check_psi(psi)  # refused as `triagan generate` refuses it (DP2 would clamp silently)
    except ValueError as exn:
        raise ConfigError(f"--truncation: {exn}") from None
    if multi_modal not in ("auto", "on", "off"):
        raise ConfigError(f"--multi-modal must be auto, on or off, not {multi_modal!r}")
    if centre_rule not in CENTRE_RULES:
        raise ConfigError(f"--centre-rule must be one of {CENTRE_RULES}, not {centre_rule!r}")
    path = Path(clusters) if clusters else None
    if path is None and weights_dir is not None:
        beside = Path(weights_dir) / CENTRES_BESIDE_WEIGHTS
        path = beside if beside.is_file() else None
    if multi_modal == "off":
        if psi == 0:
            warnings.warn("--multi-modal off at psi 0: every person gets w_avg (one identity)",
                          stacklevel=2)  # fmt: skip
        return TruncationPlan(psi, None, centre_rule)
    if path is None:
        if multi_modal == "on" or psi == 0:
            g = weights_dir or "G_DIR"
            raise ConfigError(
                f"no w centres for multi-modal truncation at psi {psi}: without them every "
                f"person would get the same w_avg. Make them with `triagan clusters --weights "
                f"{g} --out C.safetensors` and pass --clusters C.safetensors, or set "
                "--truncation > 0, or --multi-modal off to accept one identity for all"
            )
        warnings.warn(f"no w centres: truncating toward w_avg at psi {psi}", stacklevel=2)
        return TruncationPlan(psi, None, centre_rule)
    try:
        centres, _ = load_centres(path)
    except Exception as exn:  # truncated safetensors (SafetensorError), foreign file, ...
        raise ConfigError(f"w centres file {path}: cannot be read ({exn}); write it with "
                          "`triagan clusters`") from exn  # fmt: skip
    return TruncationPlan(psi, centres.float(), centre_rule, str(path))


def check_centres(plan: TruncationPlan, w_dim: int) -> None:
    """Centres must be (K, w_dim) for this generator; else every file would fail on a matmul."""
    c = plan.centres
    if c is not None and (c.ndim != 2 or c.shape[0] == 0 or c.shape[1] != w_dim):
        raise ConfigError(f"w centres {plan.source} have shape {tuple(c.shape)}, the generator "
                          f"needs (K, {w_dim}): make them with `triagan clusters` for these "
                          "weights")  # fmt: skip


def truncate_w(
    w: torch.Tensor, keys: list[str], w_avg: torch.Tensor, plan: TruncationPlan, seed: int
) -> tuple[torch.Tensor, list[int | None]]:
    """Truncated w and the centre index each row used (None toward w_avg). The "index" rule
    takes the identity's own integer (its latent's seed), as DP2 takes `z_idx % K`."""
    from triagan_model.sampling.truncation import centre_indices

    if plan.centres is None:
        return w_avg.to(w.dtype).lerp(w, plan.psi), [None] * len(keys)
    c = plan.centres.to(w.device, w.dtype)
    z_idx = [key_seed(k, seed) for k in keys] if plan.centre_rule == "index" else None
    idx = centre_indices(w, c, plan.centre_rule, z_idx)
    return c[idx].lerp(w, plan.psi), [int(i) for i in idx]


class GeneratorSynthesiser:
    """Runs a TriA-GAN generator on 288x160 crop batches (see compose.Synthesise): resizes
    them to the generator's resolution by the training data path's rules, builds the condition
    in the weights' conditioning mode, maps the identity latents and truncates."""

    def __init__(self, G: torch.nn.Module, plan: TruncationPlan, *, seed: int = 0,
                 precision: str = "fp32") -> None:  # fmt: skip
        res = tuple(G.cfg.resolution)
        if abs(res[0] / res[1] - 1.8) > 1e-6:
            raise ConfigError(f"generator resolution {res[0]}x{res[1]} is not 288:160 (1.8)")
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"--precision must be fp32 or bf16, not {precision!r}")
        self.G, self.plan, self.seed, self.precision = G, plan, seed, precision
        self.conditioning_mode = G.cfg.conditioning_mode  # from the weights; no override
        self.centre_of: dict[str, int | None] = {}  # key -> centre index, for the report

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        from triagan_model.data import transforms as T
        from triagan_model.networks.conditioning import build_condition

        G, res = self.G, tuple(self.G.cfg.resolution)
        dev = next(G.parameters()).device
        rows = []
        for i in range(len(batch["keys"])):
            s = {"img": (batch["img"][i] + 1) * 127.5, "mask": batch["mask"][i],
                 "maskrcnn_mask": batch["maskrcnn_mask"][i]}  # fmt: skip
            rows.append(T.to_model_space(T.resize_sample(s, res)))
        img = torch.stack([r["img"] for r in rows]).to(dev)
        mask = torch.stack([r["mask"] for r in rows]).to(dev)
        pm = torch.stack([r["maskrcnn_mask"] for r in rows]).to(dev)
        kp = batch["keypoints"].to(dev)
        cond = build_condition(img, mask, pm, kp, res, mode=self.conditioning_mode)
        z = latents(batch["keys"], G.cfg.z_dim, self.seed).to(dev)
        w = G.mapping(z)
        w, centres = truncate_w(w, batch["keys"], G.mapping.w_avg, self.plan, self.seed)
        self.centre_of.update(zip(batch["keys"], centres, strict=True))
        use_bf16 = self.precision == "bf16" and dev.type == "cuda"
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            return G(cond, w=w, noise_mode="const")["img"].float()
