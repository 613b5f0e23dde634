"""Did scaling the learning rate with the batch close the large-batch gap? (a study with
``lr_scaling`` among its axes; lr(B) = lr · (B / lr_base_batch)^α, lr_scaling.py).

Per model · scheduler (and any other axis), for each larger batch B and each scaling rule r:
  effect      B at r vs B unscaled               did scaling change the large batch's test accuracy?
  gap before  B0 unscaled vs B unscaled          the gap the scaling is meant to close
  gap after   B0 unscaled vs B at r              what is left of it
with B0 the smallest batch, unscaled (the lr the study names is the one chosen at the base batch).
All comparisons are the report's (analysis.compare: exact McNemar on the shared test examples where
predictions are stored), Holm-adjusted as one family per model · scheduler; the effect also gets
the paired t-test of the per-example test NLL, Holm-adjusted over the effects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .. import metrics as M
from . import analysis as A
from .analysis import ALPHA, BEYOND, UNDETERMINED, WITHIN, Comparison, ok
from .noise import series_columns, series_label

UNSCALED = "none"
CLOSED = "closed"
NARROWED = "narrowed but still beyond noise"
NO_EFFECT = "no measurable effect"
WORSE = "made it worse"
NO_GAP = "improved it, but there was no gap beyond noise to close"


@dataclass
class ScalingCase:
    model: str
    scheduler: str
    rest: str                     # other axes of the config ("" when none)
    rule: str
    small: int
    large: int
    lr_small: float               # lr_peak the trials used (NaN where not exported)
    lr_unscaled: float
    lr_scaled: float
    beta2_small: float            # AdamW's beta2 the trials used (NaN where not exported)
    beta2_unscaled: float
    beta2_scaled: float
    effect: Comparison            # large at rule (a) vs large unscaled (b)
    before: Comparison            # small unscaled (a) vs large unscaled (b)
    after: Comparison             # small unscaled (a) vs large at rule (b)
    nll_p: float = math.nan       # paired t-test of the effect's per-example NLL, Holm-adjusted
    nll_verdict: str = UNDETERMINED
    verdict: str = UNDETERMINED


@dataclass
class ScalingGroup:
    model: str
    scheduler: str
    rest: str
    cases: list[ScalingCase]
    family: str


def verdict(effect: Comparison, before: Comparison, after: Comparison) -> str:
    """The sentence a case concludes; accuracy decides, each part only beyond noise or within it."""
    if effect.verdict == WITHIN:
        return NO_EFFECT
    if effect.verdict != BEYOND:
        return UNDETERMINED
    if effect.diff < 0:
        return WORSE
    if before.verdict == UNDETERMINED:
        return UNDETERMINED
    if not (before.verdict == BEYOND and before.diff > 0):
        return NO_GAP
    if after.verdict == BEYOND and after.diff > 0:
        return NARROWED
    return CLOSED if after.verdict in (WITHIN, BEYOND) else UNDETERMINED


def on_axis(study) -> bool:
    return "lr_scaling" in study.axes and "lr_scaling" in study.trials


def analyse_lr_gap(study, main: pd.DataFrame, cfgs: pd.DataFrame, predictions, n_test) -> list[ScalingGroup]:
    if not on_axis(study):
        return []
    rest_cols = series_columns(study, ("model", "scheduler", "batch_size", "lr_scaling"))
    first = main.drop_duplicates("cfg").set_index("cfg")
    used = {k: (pd.to_numeric(main[k], errors="coerce").groupby(main["cfg"]).mean() if k in main
                else pd.Series(dtype=float)) for k in ("lr_peak", "beta2")}
    rows = [dict(r, rule=str(first.loc[r["cfg"], "lr_scaling"]), rest=series_label(first.loc[r["cfg"]], rest_cols),
                 **{k: float(v.get(r["cfg"], math.nan)) for k, v in used.items()})
            for r in cfgs.to_dict("records") if r["cfg"] in first.index and ok(r["batch_size"])]
    out = []
    for key in dict.fromkeys((r["model"], r["scheduler"], r["rest"]) for r in rows):
        g = [r for r in rows if (r["model"], r["scheduler"], r["rest"]) == key]
        by = {(int(r["batch_size"]), r["rule"]): r for r in g}
        unscaled = sorted(b for b, rule in by if rule == UNSCALED)
        if not unscaled:
            continue
        b0 = unscaled[0]
        comps, plan = [], []
        index = {}

        def add(a, b):  # each comparison once in the family (gap before is shared by the rules)
            k = (a["cfg"], b["cfg"])
            if k not in index:
                index[k] = len(comps)
                comps.append(A.compare(a, b, predictions, n_test))
            return index[k]

        for (b, rule), r in sorted(by.items()):
            if rule == UNSCALED or b <= b0 or (b, UNSCALED) not in by:
                continue
            plan.append((b, rule, add(r, by[(b, UNSCALED)]), add(by[(b0, UNSCALED)], by[(b, UNSCALED)]),
                         add(by[(b0, UNSCALED)], r)))
        if not plan:
            continue
        A.adjust(comps, n_test)
        ref = by[(b0, UNSCALED)]
        cases = [ScalingCase(key[0], key[1], key[2], rule, b0, b, ref["lr_peak"], by[(b, UNSCALED)]["lr_peak"],
                             by[(b, rule)]["lr_peak"], ref["beta2"], by[(b, UNSCALED)]["beta2"], by[(b, rule)]["beta2"],
                             comps[e], comps[g0], comps[g1])
                 for b, rule, e, g0, g1 in plan]
        _nll(cases, by, predictions)
        for c in cases:
            c.verdict = verdict(c.effect, c.before, c.after)
        name = " · ".join(x for x in key if x)
        out.append(ScalingGroup(key[0], key[1], key[2], cases,
                                f"{name}: {len(comps)} comparison{'s' if len(comps) > 1 else ''}"))
    return out


def _nll(cases: list[ScalingCase], by: dict, predictions) -> None:
    """Paired t-test of the per-example test NLL, scaled vs unscaled, Holm over the group's effects."""
    ps, same = [], []
    for c in cases:
        arr = None
        if c.effect.method == "paired":
            a, b = by[(c.large, c.rule)], by[(c.large, UNSCALED)]
            k = min(len(a["trial_ids"]), len(b["trial_ids"]))
            arr = A.paired_arrays(predictions, a["trial_ids"][:k], b["trial_ids"][:k])
        ps.append(M.paired_t_test(arr["nll_a"], arr["nll_b"]) if arr is not None else math.nan)
        same.append(arr is not None and bool((arr["nll_a"] == arr["nll_b"]).all()))
    for c, p, s in zip(cases, M.holm(ps), same):
        c.nll_p = p
        # identical NLL on every example: the t-test is undefined, the difference is none
        c.nll_verdict = BEYOND if p < ALPHA else WITHIN if (p == p or s) else UNDETERMINED
