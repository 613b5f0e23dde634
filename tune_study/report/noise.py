"""Why a batch size wins: the gradient noise scale measured in the accumulation windows, the
trade-off it implies, and whether it predicts the measured batch-size ordering at equal epochs.

B_simple = tr(Σ)/|G|² (McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch
Training", arXiv 1812.06162, App. A.1) comes in the exports as ratios of sums over windows
(noise_scale.py): per evaluation interval in history (``gns_b_simple``), per epoch at epoch ends
(``gns_b_simple_epoch``) and per trial (first epoch, last epoch run). NaN stays undefined here.

The paper's fit (its Eq. 2.11) at batch B: S/S_min = 1 + B_noise/B optimizer steps and
E/E_min = 1 + B/B_noise examples to reach a given loss. At equal epochs (equal examples) a batch
well above B_noise has seen too few examples for its size, so it is predicted behind; batches well
below B_noise need about the same examples, so they are predicted about level (``predict``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import analysis as A
from .analysis import ALPHA, BEYOND, PENDING, UNDETERMINED, Comparison, ok

HISTORY_GNS = ("gns_g2", "gns_trace", "gns_b_simple", "gns_windows")
TRIAL_GNS = ("gns_b_simple_first_epoch", "gns_b_simple_epoch")

# The prediction at equal epochs, from q = (E/E_min of the larger batch) / (E/E_min of the smaller):
# the larger batch needs q times the examples the smaller needs for the same loss. q >= 2 (it has
# seen at most half of what it needs) is a prediction that it is behind; q < 1.25 (both within 25%
# of E_min, i.e. both well below B_noise) one that they are about level. Between, the model's
# prediction is too weak to be checked against a test on ~100 examples: no prediction.
PRED_BEHIND_Q = 2.0
PRED_LEVEL_Q = 1.25
P_BEHIND, P_LEVEL, P_NONE = "larger batch behind", "about level", "no prediction"
AGREE, DISAGREE = "agree", "disagree"


def trade_off(batch: float, b_noise: float) -> tuple[float, float, float]:
    """(B/B_noise, S/S_min = 1 + B_noise/B, E/E_min = 1 + B/B_noise), McCandlish et al. Eq. 2.11;
    all NaN where B_noise is undefined."""
    if not ok(b_noise) or b_noise <= 0 or not ok(batch) or batch <= 0:
        return math.nan, math.nan, math.nan
    return batch / b_noise, 1 + b_noise / batch, 1 + batch / b_noise


def predict(small: float, large: float, b_noise: float) -> tuple[float, str]:
    """(q, prediction) for batch ``large`` against ``small`` at equal epochs (see PRED_*_Q)."""
    e_small, e_large = trade_off(small, b_noise)[2], trade_off(large, b_noise)[2]
    if not ok(e_small):
        return math.nan, P_NONE
    q = e_large / e_small
    return q, P_BEHIND if q >= PRED_BEHIND_Q else P_LEVEL if q < PRED_LEVEL_Q else P_NONE


def check(prediction: str, c: Comparison) -> str:
    """A pair's verdict: the prediction against the measured comparison of the smaller (a) with the
    larger batch (b). Only a difference beyond noise can confirm or refute: within noise confirms
    neither (not even 'about level': a small test cannot show equality)."""
    if prediction == P_NONE or c.verdict != BEYOND:
        return UNDETERMINED
    if prediction == P_BEHIND:
        return AGREE if c.diff > 0 else DISAGREE
    return DISAGREE  # predicted about level, measured apart beyond noise


def overall(verdicts: list[str]) -> str:
    """One disagreeing pair refutes the prediction; agreement needs one agreeing pair and none against."""
    return DISAGREE if DISAGREE in verdicts else AGREE if AGREE in verdicts else UNDETERMINED


# ----------------------------------------------------------------------------- results

@dataclass
class TrialNoise:
    trial_id: str
    cfg: str
    batch_size: int
    series: str                   # the other config axes (e.g. "lr_scaling=sqrt"); "" when none
    epochs_run: float
    first: float                  # B_simple over the first epoch's windows (NaN: undefined)
    end: float                    # over the last epoch run
    windows_end: int              # windows measured in that last epoch


@dataclass
class PairCheck:
    small: int
    large: int
    q: float
    prediction: str
    comparison: Comparison        # small (a) vs large (b): diff = acc_small - acc_large
    basis: str                    # "test" (same epochs run) or "val" (at the last epoch end both reached)
    epoch: float                  # the equal epoch count compared at
    confidence: float = math.nan  # of the val interval (Bonferroni-widened)
    verdict: str = UNDETERMINED


@dataclass
class SeriesCheck:
    series: str
    pairs: list[PairCheck]
    verdict: str
    family: str


@dataclass
class NoiseSection:
    model: str
    scheduler: str
    trials: list[TrialNoise]
    b_noise: float                # the estimate used: median of the trials' end values (majority_median)
    b_noise_first: float          # the same median after the first epoch
    n_defined: int                # trials with a defined end value
    trade: list[tuple]            # (batch, B/B_noise, S/S_min, E/E_min) per batch size
    checks: list[SeriesCheck] = field(default_factory=list)


@dataclass
class NoiseAnswer:
    missing: str                  # why the noise scale is not in this study; "" when measured
    sections: list[NoiseSection] = field(default_factory=list)


# ----------------------------------------------------------------------------- analysis

def missing_reason(study) -> str:
    h, t = study.history, study.trials
    if not ({"gns_b_simple", "gns_windows"} <= set(h.columns) or set(TRIAL_GNS) <= set(t.columns)):
        return "its exports have no noise-scale columns (an older export)"
    w = pd.to_numeric(h["gns_windows"], errors="coerce") if "gns_windows" in h else pd.Series(dtype=float)
    if not (w > 0).any() and not any(pd.to_numeric(t[c], errors="coerce").notna().any() for c in TRIAL_GNS if c in t):
        return "its exports carry the noise-scale columns but no window was measured (noise_scale off)"
    return ""


def series_columns(study, exclude=("model", "scheduler", "batch_size")) -> list[str]:
    return [c for c in A.config_columns(study) if c not in exclude]


def series_label(row, cols: list[str]) -> str:
    return " · ".join(f"{c}={row[c]}" for c in cols)


def _per_trial(t: pd.Series, h: pd.DataFrame) -> tuple[float, float, int]:
    """(first, end, windows in the last epoch) of one trial: the trial's columns where exported,
    else its epoch-end history rows."""
    ends = h[h["epoch_end"]].sort_values("epoch") if len(h) else h
    by_epoch = pd.to_numeric(ends["gns_b_simple_epoch"], errors="coerce") if "gns_b_simple_epoch" in ends else None
    first = float(t["gns_b_simple_first_epoch"]) if "gns_b_simple_first_epoch" in t else (
        float(by_epoch.iloc[0]) if by_epoch is not None and len(by_epoch) else math.nan)
    end = float(t["gns_b_simple_epoch"]) if "gns_b_simple_epoch" in t else (
        float(by_epoch.iloc[-1]) if by_epoch is not None and len(by_epoch) else math.nan)
    windows = 0
    if "gns_windows" in h and len(ends):
        last = float(ends["epoch"].iloc[-1])
        w = pd.to_numeric(h.loc[(h["epoch"] > last - 1 + 1e-9) & (h["epoch"] <= last + 1e-9), "gns_windows"],
                          errors="coerce")
        windows = int(w.fillna(0).sum())
    return (first if first == first else math.nan), (end if end == end else math.nan), windows


def majority_median(defined: list[float], n: int) -> float:
    """The median of the trials' values, defined only when more than half of the ``n`` trials have
    one. An undefined B_simple is an estimated |G|² or tr(Σ) <= 0; the first (the gradient's signal
    below its noise, as in tiny-bert's smoke study at chance) means a large noise scale, not a value
    missing at random, so the median of the defined ones alone could lean low. With more than half
    defined, the median of all, wherever the undefined ones lie, is still bounded by defined values."""
    return float(np.median(defined)) if defined and 2 * len(defined) > n else math.nan


def analyse_noise(study, main: pd.DataFrame, cfgs: pd.DataFrame, predictions, n_test, n_val) -> NoiseAnswer:
    """``main``: the labelled main-stage trials; ``cfgs``: their configs (analysis.configs)."""
    why = missing_reason(study)
    if why:
        return NoiseAnswer(why)
    cols = series_columns(study)
    t = main.copy()
    for c in TRIAL_GNS:
        if c in t:
            t[c] = pd.to_numeric(t[c], errors="coerce")
    hist = {k: g for k, g in study.history.groupby("trial_id")} if len(study.history) else {}
    out = []
    for (model, sched), g in t.groupby(["model", "scheduler"], sort=True):
        rows = []
        for _, r in g.sort_values(["batch_size", "trial_id"], kind="stable").iterrows():
            if not ok(r["batch_size"]):
                continue
            first, end, w = _per_trial(r, hist.get(r["trial_id"], study.history.iloc[0:0]))
            rows.append(TrialNoise(r["trial_id"], r["cfg"], int(r["batch_size"]), series_label(r, cols),
                                   float(r["epochs_run"]), first, end, w))
        # B_noise: one number per model · scheduler. B_simple is a property of the model, the data and
        # the point in training, not of the batch that measures it (the estimate is unbiased in every
        # window of >= 2 micro-batches), so every trial estimates it. The median of their end values
        # is robust to one trial's noisy estimate (a large batch measures few windows an epoch) and
        # picks no trial by the outcome it is meant to explain; pooling the sums would let the
        # smallest batch, with the most windows, decide alone.
        ends = [x.end for x in rows if ok(x.end)]
        b_noise = majority_median(ends, len(rows))
        sec = NoiseSection(str(model), str(sched), rows, b_noise,
                           majority_median([x.first for x in rows if ok(x.first)], len(rows)),
                           len(ends), [(b, *trade_off(b, b_noise)) for b in sorted({x.batch_size for x in rows})])
        c = cfgs[(cfgs["model"] == model) & (cfgs["scheduler"] == sched)]
        sec.checks = _checks(sec, c, g, cols, study.history, predictions, n_test, n_val)
        out.append(sec)
    return NoiseAnswer("", out)


def _checks(sec, cfgs, trials, cols, history, predictions, n_test, n_val) -> list[SeriesCheck]:
    label = {cfg: series_label(r, cols) for cfg, r in trials.drop_duplicates("cfg").set_index("cfg").iterrows()}
    rows = [r for r in cfgs.to_dict("records") if r["cfg"] in label and ok(r["batch_size"])]
    out = []
    for s in dict.fromkeys(label[r["cfg"]] for r in rows):
        rs = sorted((r for r in rows if label[r["cfg"]] == s), key=lambda r: r["batch_size"])
        if len(rs) < 2 or len({r["batch_size"] for r in rs}) < len(rs):
            continue
        pairs = _equal_epochs(rs, trials, history, predictions, n_test, n_val)
        for p in pairs:
            p.q, p.prediction = predict(p.small, p.large, sec.b_noise)
            p.verdict = check(p.prediction, p.comparison)
        fam = f"{sec.model} · {sec.scheduler}" + (f" · {s}" if s else "")
        out.append(SeriesCheck(s, pairs, overall([p.verdict for p in pairs]),
                               f"{fam}: {len(pairs)} adjacent pair{'s' if len(pairs) > 1 else ''}"))
    return out


def _equal_epochs(rs: list[dict], trials, history, predictions, n_test, n_val) -> list[PairCheck]:
    """Adjacent batch sizes compared at equal epochs, as one family. Where both configs' runs ran the
    same epochs, their test accuracy (best-val weights) with the report's comparison (analysis.compare:
    paired McNemar on stored predictions, Welch over seeds, Newcombe otherwise); else (early stopping
    cut one) val accuracy at the last epoch end both reached, Newcombe's unpaired interval on n_val.
    The family's alpha is split between the two kinds by their counts (Bonferroni), then each kind
    is Holm-adjusted (test) or Bonferroni-widened (val) within its share: the family stays at 0.05."""
    epochs = {r["cfg"]: set(trials.loc[trials["cfg"] == r["cfg"], "epochs_run"].dropna().astype(float)) for r in rs}
    pairs = []
    for a, b in zip(rs, rs[1:]):
        e = epochs[a["cfg"]] | epochs[b["cfg"]]
        same = len(e) == 1
        ep = min(e) if e else math.nan
        if same:
            c = A.compare(a, b, predictions, n_test)
        else:
            c = _val_at_epoch(a, b, ep, history, n_val)
        pairs.append(PairCheck(int(a["batch_size"]), int(b["batch_size"]), math.nan, P_NONE, c,
                               "test" if same else "val", ep))
    m = len(pairs)
    for basis, n in (("test", n_test), ("val", n_val)):
        part = [p for p in pairs if p.basis == basis]
        if not part:
            continue
        alpha = ALPHA * len(part) / m
        for p in part:
            if p.basis == "val" and p.comparison.verdict == PENDING:  # as adjust widens it, for the text
                p.confidence = 1 - alpha / (len([q for q in part if q.comparison.verdict == PENDING]) or 1)
                _, p.comparison.lo, p.comparison.hi = _newcombe(p.comparison, n_val, 1 - alpha)
        A.adjust([p.comparison for p in part], n, alpha)
    return pairs


def _newcombe(c: Comparison, n: int, confidence: float):
    from .. import metrics as M

    return M.diff_interval(c.acc_a * n, n, c.acc_b * n, n, confidence=confidence)


def _val_at_epoch(a: dict, b: dict, epoch: float, history: pd.DataFrame, n_val) -> Comparison:
    """Val accuracy of configs ``a`` and ``b`` at epoch end ``epoch`` (mean over a config's runs)."""
    accs = []
    for r in (a, b):
        h = history[history["trial_id"].isin(set(r["trial_ids"])) & history["epoch_end"]
                    & np.isclose(history["epoch"], epoch)]
        ids = set(h.dropna(subset=["val_acc"])["trial_id"])
        accs.append(float(h["val_acc"].mean()) if ok(epoch) and ids == set(r["trial_ids"]) else math.nan)
    note = f"val accuracy at epoch {epoch:g}, the last epoch end both reached" if ok(epoch) else "no epoch end"
    if not all(ok(x) for x in accs) or not n_val:
        why = "no val accuracy at that epoch end for every run" if not all(ok(x) for x in accs) else "n_val unknown"
        return Comparison(a["cfg"], b["cfg"], accs[0], accs[1], "", UNDETERMINED, diff=accs[0] - accs[1],
                          note=f"{note}: {why}")
    return Comparison(a["cfg"], b["cfg"], accs[0], accs[1], "unpaired", PENDING, diff=accs[0] - accs[1], note=note)
