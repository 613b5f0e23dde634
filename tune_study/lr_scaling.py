"""AdamW's learning rate and beta2 scaled with the effective batch, and the batch they scale from.

    lr(B)    = lr · (B / B_base)^α        α = 0.5 (sqrt) or 1 (linear); none: lr at every batch
    beta2(B) = 0.999^κ,  κ = B / B_base    (beta2_scaling halflife; none: 0.999)

``B_base`` is the config's ``lr_base_batch``. A study that scales and does not name it gets its
smallest batch (``with_base_batch``: the least value of the batch_size axis, a search's low bound
or smallest choice, else the fixed batch_size), so every trial's config carries the number it used.
"""
from __future__ import annotations

import logging

from .study_sections import axis_values

log = logging.getLogger(__name__)

LR_RULES = ("none", "sqrt", "linear")
BETA2_RULES = ("none", "halflife")
# sqrt: the square-root rule for adaptive optimizers, lr ∝ √B (Malladi et al. 2022, "On the SDEs and
# Scaling Rules for Adaptive Gradient Algorithms", NeurIPS). linear: SGD's rule, lr ∝ B (Goyal et al.
# 2017, "Accurate, Large Minibatch SGD", §2.1-2.2), which needs warmup to be stable at large B.
ALPHA = {"sqrt": 0.5, "linear": 1.0}
ADAM_BETAS = (0.9, 0.999)   # torch's AdamW defaults, named so that beta2 can be scaled from them
SCALING_KEYS = ("lr_scaling", "beta2_scaling")


def scaled_lr(lr: float, batch_size: int, base_batch: int | None, rule: str) -> float:
    """The peak learning rate at effective batch ``batch_size``."""
    if rule == "none":
        return lr   # not lr * 1.0: the unscaled run stays the run it was before scaling existed
    return lr * (batch_size / base_batch) ** ALPHA[rule]


def scaled_beta2(beta2: float, batch_size: int, base_batch: int | None, rule: str) -> float:
    """beta2^κ: one step at batch κ·B_base decays the second-moment average as much as κ steps at
    B_base, so its half-life stays the same number of examples (Marek et al. 2025, arXiv 2507.07101;
    Malladi et al. 2022 state their rule as 1 − κ(1 − β), the first-order form of the same idea near
    κ = 1). That form is not used: it leaves (0, 1) for κ ≥ 1/(1 − β) (β1 = 0.9 at κ = 64 gives
    −5.4; beta2 0.999 past κ = 1000), while beta2^κ stays in (0, 1) for every κ > 0."""
    if rule == "none":
        return beta2
    return beta2 ** (batch_size / base_batch)


def adamw_settings(c) -> tuple[float, tuple[float, float]]:
    """(peak lr, betas) for a validated ``TrainConfig``."""
    B, base = c.batch_size, c.lr_base_batch
    beta1, beta2 = ADAM_BETAS
    return scaled_lr(c.lr, B, base, c.lr_scaling), (beta1, scaled_beta2(beta2, B, base, c.beta2_scaling))


def _values(key: str, axes: dict, fixed: dict, default) -> list:
    return list(axis_values(axes[key])) if key in axes else [fixed.get(key, default)]


def smallest_batch(axes: dict, fixed: dict, default: int) -> int | None:
    """The least effective batch any trial of the study can have; None if a value is not a batch
    (validation then names it)."""
    values = _values("batch_size", axes, fixed, default)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        return None
    return min(values)


def _scales(axes: dict, fixed: dict) -> bool:
    """Whether some trial of the study scales lr or beta2 with its batch."""
    return any(r != "none" for key in SCALING_KEYS for r in _values(key, axes, fixed, "none"))


def with_base_batch(axes: dict, fixed: dict, default_batch: int) -> dict:
    """``fixed`` with ``lr_base_batch`` set to the study's smallest batch when some trial scales lr
    or beta2 and the study names no base batch of its own; otherwise ``fixed`` unchanged (an
    unscaled study's trial configs stay exactly as written)."""
    if "lr_base_batch" in axes or fixed.get("lr_base_batch") is not None:
        return fixed
    if not _scales(axes, fixed):
        return fixed
    base = smallest_batch(axes, fixed, default_batch)
    if base is None:
        return fixed
    return {**fixed, "lr_base_batch": base}


def warn_if_nothing_scaled(axes: dict, fixed: dict, default_batch: int) -> None:
    """A validated study that scales lr or beta2 from a base batch which is every trial's batch:
    the setting changes nothing, which is worth a warning (never before the study is known valid)."""
    base = fixed.get("lr_base_batch")
    if base is None or "lr_base_batch" in axes or not _scales(axes, fixed):
        return
    if set(_values("batch_size", axes, fixed, default_batch)) == {base}:
        log.warning("lr_scaling / beta2_scaling: every trial has batch_size %d, the base batch: nothing "
                    "is scaled", base)
