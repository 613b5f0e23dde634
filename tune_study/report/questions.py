"""The seed's three questions and the early-stopping note, as pure analyses with verdicts.

(a) is a collapse to chance real?  (b) why did test loss rise while accuracy rose?  (c) is a larger
batch behind for its size or for taking fewer optimizer steps? Each returns what the data can say,
and says so where they cannot.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import metrics as M
from .analysis import ALPHA, BEYOND, N_BOOT, NOT_COMPARABLE, UNDETERMINED, WITHIN, ok, paired_arrays

MAX_PAIR_SCAN = 400  # (b) tests at most this many candidate pairs (2 x 2,000 bootstrap resamples each)


# ----------------------------------------------------------------------------- (a) collapse

def collapse_table(trials: pd.DataFrame, history: pd.DataFrame, majority: float, margin: float) -> pd.DataFrame:
    """trial_id, collapsed, collapse_epoch, collapse_kind from each trial's epoch-end val accuracy."""
    ends = history[history["epoch_end"]] if len(history) else history
    groups = {k: g for k, g in ends.groupby("trial_id")} if len(ends) else {}
    rows = []
    for tid in trials["trial_id"]:
        h = groups.get(tid)
        c, e, k = M.collapse_info(h, majority, margin) if h is not None else (False, None, "")
        rows.append({"trial_id": tid, "collapsed": bool(c), "collapse_epoch": e, "collapse_kind": k})
    out = pd.DataFrame(rows, columns=["trial_id", "collapsed", "collapse_epoch", "collapse_kind"])
    out["collapse_epoch"] = pd.array(out["collapse_epoch"], dtype="Int64")
    return out


@dataclass
class CollapseAnswer:
    models: list[str]
    has_roberta: bool
    collapsed: list[dict]         # trials that left the chance band and fell back (or non-finite)
    never_learned: list[str]      # configs whose trials never left the band
    rates: list[dict]             # per config with >= 2 runs: k of n with a Wilson interval
    roberta_rate: tuple | None    # (k, n, lo, hi) over every RoBERTa run


def q_collapse(t: pd.DataFrame) -> CollapseAnswer:
    """``t``: labelled trials with the columns of ``collapse_table``."""
    models = sorted({str(m) for m in t["model"].dropna()})
    is_rob = t["model"].astype(str).str.lower().str.contains("roberta")
    bad = t[t["collapse_kind"].isin(["collapsed", "non_finite"])]
    rates = []
    for cfg, g in t.groupby("cfg", sort=False):
        if len(g) >= 2:
            k = int(g["collapse_kind"].isin(["collapsed", "non_finite"]).sum())
            lo, hi = M.wilson_interval(k, len(g))
            rates.append({"cfg": cfg, "k": k, "n": len(g), "lo": lo, "hi": hi})
    rob = None
    if is_rob.any():
        r = t[is_rob]
        k = int(r["collapse_kind"].isin(["collapsed", "non_finite"]).sum())
        rob = (k, len(r), *M.wilson_interval(k, len(r)))
    never = sorted(set(t.loc[t["collapse_kind"] == "never_learned", "cfg"]))
    return CollapseAnswer(models, bool(is_rob.any()), bad.to_dict("records"), never, rates, rob)


# ----------------------------------------------------------------------------- (b) loss vs accuracy

@dataclass
class TrialConfidence:
    trial_id: str
    cfg: str
    n_wrong: int
    conf_wrong: float             # mean top-class probability over misclassified test examples
    conf_right: float
    nll_wrong: float              # mean NLL over the misclassified examples


def confidence_when_wrong(predictions: pd.DataFrame, trials: pd.DataFrame) -> dict[str, TrialConfidence]:
    out = {}
    if predictions is None:
        return out
    cfg = dict(zip(trials["trial_id"], trials["cfg"]))
    for tid, g in predictions.groupby("trial_id"):
        p = g["prob_pos"].to_numpy(float)
        y = g["label"].to_numpy().astype(int)
        top = np.maximum(p, 1 - p)
        wrong = M.says_positive(p) != y
        nll = M.nll_per_example(p, y)
        out[str(tid)] = TrialConfidence(str(tid), cfg.get(tid, str(tid)), int(wrong.sum()),
                                        float(top[wrong].mean()) if wrong.any() else math.nan,
                                        float(top[~wrong].mean()) if (~wrong).any() else math.nan,
                                        float(nll[wrong].mean()) if wrong.any() else math.nan)
    return out


@dataclass
class LossAccPair:
    a: str                        # the more accurate config
    b: str
    acc: tuple                    # (diff, lo, hi) paired bootstrap, a - b
    nll: tuple                    # (diff, lo, hi) paired bootstrap of mean NLL, a - b
    acc_verdict: str
    nll_verdict: str
    conf_a: TrialConfidence | None = None
    conf_b: TrialConfidence | None = None
    p_acc: float = math.nan       # exact McNemar, then Holm-adjusted over the candidate pairs
    p_nll: float = math.nan       # paired t-test of the per-example NLL, then Holm-adjusted likewise


@dataclass
class LossAccAnswer:
    paired: bool                  # predictions were available
    candidates: int               # pairs whose point estimates have higher acc and higher loss
    confirmed: list[LossAccPair]  # both differences beyond noise
    not_confirmed: list[LossAccPair]
    family: int = 0               # candidate pairs tested: the Holm family of each of the two tests
    unpaired_candidates: list[tuple] = field(default_factory=list)  # (a, b, acc_a, acc_b, loss_a, loss_b)


def q_loss_vs_acc(cfg_trials: pd.DataFrame, predictions: pd.DataFrame | None) -> LossAccAnswer:
    """Pairs of single-run trials where A is more accurate yet has the higher test loss. A pair counts
    only if both differences are beyond noise: exact McNemar for accuracy and a paired t-test of the
    per-example NLL, each Holm-adjusted over all candidate pairs tested (one family per test); the
    paired bootstrap 95% CIs give the sizes."""
    t = cfg_trials[cfg_trials["test_acc"].notna() & cfg_trials["test_loss"].notna()].to_dict("records")
    cands = [(a, b) for a in t for b in t if a["test_acc"] > b["test_acc"] and a["test_loss"] > b["test_loss"]]
    if predictions is None:
        return LossAccAnswer(False, len(cands), [], [], [(a["cfg"], b["cfg"], a["test_acc"], b["test_acc"],
                                                          a["test_loss"], b["test_loss"]) for a, b in cands])
    conf = confidence_when_wrong(predictions, cfg_trials)
    pairs = []
    for a, b in cands[:MAX_PAIR_SCAN]:
        arr = paired_arrays(predictions, [a["trial_id"]], [b["trial_id"]])
        if arr is None:
            continue
        pairs.append(LossAccPair(a["cfg"], b["cfg"], M.paired_bootstrap(arr["correct_a"], arr["correct_b"], N_BOOT),
                                 M.paired_bootstrap(arr["nll_a"], arr["nll_b"], N_BOOT), "", "",
                                 conf.get(a["trial_id"]), conf.get(b["trial_id"]),
                                 M.mcnemar_exact(arr["correct_a"], arr["correct_b"])[2],
                                 M.paired_t_test(arr["nll_a"], arr["nll_b"])))
    for p, pa, pn in zip(pairs, M.holm([p.p_acc for p in pairs]), M.holm([p.p_nll for p in pairs])):
        p.p_acc, p.p_nll = pa, pn
        p.acc_verdict = BEYOND if pa < ALPHA else WITHIN if pa == pa else UNDETERMINED
        p.nll_verdict = BEYOND if pn < ALPHA else WITHIN if pn == pn else UNDETERMINED
    both = [p.acc_verdict == BEYOND and p.nll_verdict == BEYOND and p.acc[0] > 0 and p.nll[0] > 0 for p in pairs]
    yes, no = [p for p, y in zip(pairs, both) if y], [p for p, y in zip(pairs, both) if not y]
    yes.sort(key=lambda p: -p.nll[1])
    return LossAccAnswer(True, len(cands), yes, no, len(pairs))


@dataclass
class CalibrationGroup:
    scheduler: str
    n_trials: int                 # trials that completed their planned epochs
    n_excluded: int               # stopped early or unfinished: left out
    acc: float
    conf: float
    gap: tuple                    # mean(confidence - correct) with its CI (bootstrap or Wilson)
    verdict: str                  # BEYOND (over/under-confident) / WITHIN / UNDETERMINED
    method: str


def calibration_by_scheduler(trials: pd.DataFrame, predictions: pd.DataFrame | None,
                             n_test: int | None) -> list[CalibrationGroup]:
    """Mean confidence vs accuracy per scheduler, only over trials that ran all planned epochs (an
    ASHA-stopped 1-epoch trial says little about a schedule that decays over all epochs)."""
    out = []
    for sched, g in trials[trials["test_acc"].notna()].groupby("scheduler", sort=True):
        full = g[(g["epochs_run"] >= g["epochs_planned"]) & g["epochs_planned"].notna()]
        excl = len(g) - len(full)
        if not len(full):
            out.append(CalibrationGroup(str(sched), 0, excl, math.nan, math.nan, (math.nan,) * 3, UNDETERMINED, ""))
            continue
        acc, conf = float(full["test_acc"].mean()), float(full["test_confidence"].mean())
        p = predictions[predictions["trial_id"].isin(set(full["trial_id"]))] if predictions is not None else None
        if p is not None and p["trial_id"].nunique() == len(full):
            pr = p["prob_pos"].to_numpy(float)
            top, right = np.maximum(pr, 1 - pr), (M.says_positive(pr) == p["label"].to_numpy().astype(int))
            gap = M.paired_bootstrap(top, right.astype(float), N_BOOT)
            acc, conf = float(right.mean()), float(top.mean())  # the same examples as the interval
            method = "paired bootstrap over test examples"
        elif n_test and ok(conf):
            lo, hi = M.wilson_interval(acc * n_test * len(full), n_test * len(full))
            gap, method = (conf - acc, conf - hi, conf - lo), "Wilson interval of the accuracy"
        else:
            gap, method = (conf - acc if ok(conf) else math.nan, math.nan, math.nan), ""
        verdict = UNDETERMINED if not ok(gap[1]) else BEYOND if gap[1] > 0 or gap[2] < 0 else WITHIN
        out.append(CalibrationGroup(str(sched), len(full), excl, acc, conf, gap, verdict, method))
    return out


# ----------------------------------------------------------------------------- (c) step matching

@dataclass
class MatchedPoint:
    x: float                      # steps or samples; nan when the ranges do not overlap
    acc_small: float
    acc_large: float
    diff: float                   # large - small
    lo: float
    hi: float
    verdict: str
    range_small: tuple
    range_large: tuple
    confidence: float = 0.95      # of [lo, hi]: Bonferroni-widened over the model · scheduler's matched points


@dataclass
class StepPair:
    model: str
    scheduler: str
    small: int
    large: int
    steps: MatchedPoint
    samples: MatchedPoint
    attribution: str              # one of the ATTR_* texts, or "" when not both comparable


ATTR_FEWER = "fewer steps"        # behind at matched samples, not behind at matched steps
ATTR_ITSELF = "batch size itself" # behind even at matched steps
ATTR_PER_STEP = "more per step"   # level at matched samples, ahead at matched steps
ATTR_AHEAD = "ahead per sample"   # larger batch ahead at matched samples
ATTR_LEVEL = "level"              # within noise at both points


def _curve(h: pd.DataFrame) -> pd.DataFrame:
    # all evaluations (fractional epochs too), averaged over a config's runs at the same point
    return (h.groupby("epoch").agg(steps=("optimizer_steps", "mean"), samples=("samples_seen", "mean"),
                                   acc=("val_acc", "mean")).reset_index().dropna().sort_values("epoch"))


def _matched(cs: pd.DataFrame, cl: pd.DataFrame, key: str) -> MatchedPoint:
    """Both curves at the furthest ``key`` value inside both measured ranges; not comparable when
    the ranges do not overlap. Interpolation only between two measured points of one curve. The
    verdict stays undetermined until ``_judge`` sees the whole family."""
    rs, rl = (float(cs[key].min()), float(cs[key].max())), (float(cl[key].min()), float(cl[key].max()))
    x = min(rs[1], rl[1])
    if x < max(rs[0], rl[0]):
        return MatchedPoint(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, NOT_COMPARABLE, rs, rl)
    a, b = M.interp_at(cs[key], cs["acc"], x), M.interp_at(cl[key], cl["acc"], x)
    return MatchedPoint(x, a, b, b - a, math.nan, math.nan, UNDETERMINED, rs, rl)


def _judge(points: list[MatchedPoint], n_val: int | None) -> None:
    """Newcombe's unpaired interval of each measured point's difference on n_val, at 1 - alpha/m for
    the family's m measured points (Bonferroni: val predictions are not stored, so no paired p-values
    for Holm); undetermined without n_val."""
    todo = [m for m in points if m.verdict != NOT_COMPARABLE]
    if not n_val:
        return
    conf = 1 - ALPHA / max(len(todo), 1)
    for m in todo:
        _, m.lo, m.hi = M.diff_interval(m.acc_large * n_val, n_val, m.acc_small * n_val, n_val, confidence=conf)
        m.confidence, m.verdict = conf, BEYOND if m.lo > 0 or m.hi < 0 else WITHIN


def _attribute(st: MatchedPoint, sa: MatchedPoint) -> str:
    if NOT_COMPARABLE in (st.verdict, sa.verdict) or UNDETERMINED in (st.verdict, sa.verdict):
        return ""
    if st.verdict == BEYOND and st.diff < 0:
        return ATTR_ITSELF
    if sa.verdict == BEYOND and sa.diff < 0:
        return ATTR_FEWER
    if sa.verdict == BEYOND and sa.diff > 0:
        return ATTR_AHEAD
    if st.verdict == BEYOND and st.diff > 0:
        return ATTR_PER_STEP
    return ATTR_LEVEL


def q_steps(history: pd.DataFrame, cfg_trials: pd.DataFrame, n_val: int | None) -> list[StepPair]:
    """Adjacent batch sizes of each model · scheduler at matched optimizer steps and matched samples;
    the measured points of one model · scheduler form one family (``_judge``)."""
    out = []
    if not len(history):
        return out
    for (model, sched), p in cfg_trials.groupby(["model", "scheduler"], sort=True):
        if p.groupby("batch_size")["cfg"].nunique().max() > 1:  # several configs per batch size: not a batch axis
            continue
        curves = {}
        for b, g in p.groupby("batch_size"):
            c = _curve(history[history["trial_id"].isin(set(g["trial_id"]))])
            if len(c):
                curves[int(b)] = c
        bs = sorted(curves)
        pairs = [(s, l, _matched(curves[s], curves[l], "steps"), _matched(curves[s], curves[l], "samples"))
                 for s, l in zip(bs, bs[1:])]
        _judge([m for *_, st, sa in pairs for m in (st, sa)], n_val)
        out += [StepPair(str(model), str(sched), s, l, st, sa, _attribute(st, sa)) for s, l, st, sa in pairs]
    return out


# ----------------------------------------------------------------------------- early stopping

@dataclass
class AshaNote:
    stopped: list[dict]           # per stopped trial: cfg, batch_size, epochs_run, optimizer_steps
    completed: list[dict]         # the same for trials that ran all planned epochs
    by_batch: list[dict]          # batch_size, n, stopped, mean epochs, steps per epoch


def asha_note(trials: pd.DataFrame) -> AshaNote | None:
    t = trials[trials["stage"] != "repeat"]
    if not t["stopped_early"].any():
        return None
    cols = ["cfg", "batch_size", "epochs_run", "optimizer_steps", "best_val_acc"]
    by = []
    for b, g in t.groupby("batch_size", sort=True):
        spe = (g["optimizer_steps"] / g["epochs_run"]).replace([np.inf], np.nan).dropna()
        by.append({"batch_size": int(b), "n": len(g), "stopped": int(g["stopped_early"].sum()),
                   "epochs": float(g["epochs_run"].mean()),
                   "steps_per_epoch": float(spe.median()) if len(spe) else math.nan})
    return AshaNote(t.loc[t["stopped_early"], cols].to_dict("records"),
                    t.loc[~t["stopped_early"] & (t["epochs_run"] >= t["epochs_planned"]), cols].to_dict("records"), by)
