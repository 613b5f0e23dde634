"""Pure analysis: a study's dataframes -> result objects that carry their numbers and a verdict.

A verdict is one of VERDICTS; nothing defaults to one. Comparisons of two configs' test accuracy:
  - one run each and stored predictions: exact McNemar (the test) + paired bootstrap CI (the size);
  - one run each, no predictions: Newcombe's unpaired interval on n_test (conservative);
  - >= 2 runs each: Welch over the runs; both without spread -> undefined, fall back to the paired test;
  - otherwise undetermined. Families of comparisons are Holm-adjusted (metrics.holm).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import metrics as M
from .load import MAIN_AXES, StudyResults

BEYOND, WITHIN, UNDETERMINED, NOT_COMPARABLE = "beyond noise", "within noise", "undetermined", "not comparable"
VERDICTS = (BEYOND, WITHIN, UNDETERMINED, NOT_COMPARABLE)
ALPHA = 0.05
N_BOOT = 2000
PENDING = "pending"  # a test result not yet judged within its family; never rendered (adjust replaces it)
SYMBOL = {BEYOND: ">", WITHIN: "≈", UNDETERMINED: "?", NOT_COMPARABLE: "?"}


def ok(x) -> bool:
    try:
        return x is not None and not bool(pd.isna(x))
    except (TypeError, ValueError):
        return True


# ----------------------------------------------------------------------------- configs

def config_columns(study: StudyResults) -> list[str]:
    """What makes a config: model, scheduler, batch size and every other axis except the seed."""
    axes = [a for a in study.axes if a not in ("seed", "stage")]
    return [c for c in dict.fromkeys([*MAIN_AXES, *axes]) if c in study.trials.columns]


def _fmt_axis(k, v) -> str:
    if not ok(v):
        return "?"
    if k == "batch_size":
        return f"b{int(v)}"
    if k in ("model", "scheduler"):
        return str(v)
    return f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"


def label_trials(study: StudyResults) -> pd.DataFrame:
    """trials with a ``cfg`` label column."""
    cols = config_columns(study)
    t = study.trials.copy()
    t["cfg"] = [" · ".join(_fmt_axis(k, r[k]) for k in cols) for _, r in t.iterrows()] if len(t) else []
    return t


def configs(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per config label of ``trials`` (already labelled): runs, trial ids, means over runs."""
    rows = []
    done = trials[trials["test_acc"].notna() | trials["best_val_acc"].notna()]
    for cfg, g in done.groupby("cfg", sort=False):
        r = {"cfg": cfg, "trial_ids": list(g["trial_id"]), "n": len(g)}
        for k in ("model", "scheduler", "batch_size"):
            r[k] = g[k].iloc[0]
        for m in ("best_val_acc", "best_val_loss", "test_acc", "test_loss", "test_ece", "test_confidence",
                  "epochs_run", "optimizer_steps"):
            r[m] = float(g[m].mean()) if g[m].notna().any() else math.nan
            r[f"{m}_values"] = [float(x) for x in g[m].dropna()]
        r["seeds"] = [x for x in g["seed"]] if "seed" in g else []
        rows.append(r)
    return pd.DataFrame(rows)


def n_test_of(trials: pd.DataFrame, predictions: pd.DataFrame | None) -> int | None:
    if "n_test" in trials and trials["n_test"].notna().any():
        return int(trials["n_test"].dropna().iloc[0])
    if predictions is not None:
        return int(predictions.groupby("trial_id").size().max())
    return None


def n_val_of(trials: pd.DataFrame) -> int | None:
    return int(trials["n_val"].dropna().iloc[0]) if "n_val" in trials and trials["n_val"].notna().any() else None


def majority_of(trials: pd.DataFrame) -> tuple[float, bool]:
    """(majority-class rate on val, measured?); 0.5 assumed for a study that did not report it."""
    if "val_majority_rate" in trials and trials["val_majority_rate"].notna().any():
        return float(trials["val_majority_rate"].dropna().iloc[0]), True
    return 0.5, False


# ----------------------------------------------------------------------------- ranking

# Accuracies are counts / n, or means of such over runs: two different ones differ by at least
# 1 / (n * runs), far above this, while one mean summed in another order differs by ~1e-16
# ((109 + 111) / 150 / 2 > (110 + 110) / 150 / 2 as floats). Entries closer than this are ties.
TIE_TOL = 1e-9


def _cmp(x: tuple, y: tuple) -> int:
    for a, b in zip(x, y):
        a, b = (math.inf if not ok(v) else float(v) for v in (a, b))  # missing: last
        if not math.isclose(a, b, rel_tol=0, abs_tol=TIE_TOL):
            return -1 if a < b else 1
    return 0


def rank(items: list, key) -> list:
    """``items`` by ``key(item)`` ascending: a tuple compared entry by entry, entries within TIE_TOL
    equal (so the next entry decides), missing ones last; full ties keep the items' order."""
    return sorted(items, key=functools.cmp_to_key(lambda p, q: _cmp(key(p), key(q))))


# ----------------------------------------------------------------------------- selection (val only)

@dataclass
class Best:
    cfg: str
    row: dict
    tied_on_val: list[str]      # other configs with the same best val accuracy
    broken_by: str              # "" | "val loss" | "table order"


def select_best(cfgs: pd.DataFrame) -> Best | None:
    """The config with the highest best val accuracy; ties broken by lower best val loss, then by
    the table's order. Test numbers never take part in selection."""
    c = cfgs[cfgs["best_val_acc"].notna()].reset_index(drop=True)
    if not len(c):
        return None
    c = c.assign(_loss=c["best_val_loss"].fillna(math.inf))
    c = c.iloc[rank(list(range(len(c))), lambda i: (-c["best_val_acc"].iloc[i], c["_loss"].iloc[i]))]
    top = c.iloc[0]
    tied = c[np.isclose(c["best_val_acc"], top["best_val_acc"], rtol=0, atol=TIE_TOL)]
    broken = ""
    if len(tied) > 1:
        broken = "table order" if np.isclose(tied["_loss"], top["_loss"], rtol=0, atol=TIE_TOL).all() else "val loss"
    return Best(top["cfg"], top.to_dict(), [x for x in tied["cfg"] if x != top["cfg"]], broken)


# ----------------------------------------------------------------------------- comparing two configs

@dataclass
class Comparison:
    a: str
    b: str
    acc_a: float
    acc_b: float
    method: str                   # "paired" | "unpaired" | "seeds" | ""
    verdict: str                  # set explicitly: PENDING until ``adjust`` judges it within its family
    diff: float = math.nan        # acc_a - acc_b
    lo: float = math.nan
    hi: float = math.nan
    p: float = math.nan
    p_adj: float = math.nan
    n_discordant: tuple = ()      # McNemar (b, c)
    note: str = ""                # e.g. "identical answers", "no spread across seeds"
    nll_diff: float = math.nan    # paired: mean NLL_a - NLL_b with its bootstrap CI
    nll_lo: float = math.nan
    nll_hi: float = math.nan


def paired_arrays(predictions: pd.DataFrame, ids_a: list, ids_b: list) -> dict | None:
    """Per-example correctness and NLL of A and B on the shared test rows, stacked over matched runs
    (run i of A with run i of B). None when any of them has no predictions."""
    if predictions is None:
        return None
    by = {k: g for k, g in predictions.groupby("trial_id")}
    ca, cb, la, lb = [], [], [], []
    for ta, tb in zip(ids_a, ids_b):
        if ta not in by or tb not in by:
            return None
        m = by[ta][["row", "label", "prob_pos"]].merge(by[tb][["row", "prob_pos"]], on="row", suffixes=("_a", "_b"))
        if not len(m):
            return None
        y = m["label"].to_numpy().astype(int)
        for p, c, ll in (("prob_pos_a", ca, la), ("prob_pos_b", cb, lb)):
            c.append(M.says_positive(m[p].to_numpy()) == y)
            ll.append(M.nll_per_example(m[p], y))
    return {"correct_a": np.concatenate(ca), "correct_b": np.concatenate(cb),
            "nll_a": np.concatenate(la), "nll_b": np.concatenate(lb)}


def _paired(a: dict, b: dict, arr: dict, note: str = "") -> Comparison:
    bb, cc, p = M.mcnemar_exact(arr["correct_a"], arr["correct_b"])
    d, lo, hi = M.paired_bootstrap(arr["correct_a"], arr["correct_b"], N_BOOT)
    nd, nlo, nhi = M.paired_bootstrap(arr["nll_a"], arr["nll_b"], N_BOOT)
    c = Comparison(a["cfg"], b["cfg"], a["test_acc"], b["test_acc"], "paired", PENDING, diff=d, lo=lo, hi=hi, p=p,
                   n_discordant=(bb, cc), nll_diff=nd, nll_lo=nlo, nll_hi=nhi, note=note)
    if bb + cc == 0:
        c.verdict, c.note = WITHIN, ("; ".join(x for x in (note, "identical answers on every test example") if x))
    return c


def compare(a: dict, b: dict, predictions: pd.DataFrame | None, n_test: int | None) -> Comparison:
    """Test accuracy of config ``a`` vs ``b`` (rows of ``configs``); verdict before any family
    adjustment (see ``adjust``)."""
    if not ok(a.get("test_acc")) or not ok(b.get("test_acc")):
        return Comparison(a["cfg"], b["cfg"], a.get("test_acc", math.nan), b.get("test_acc", math.nan), "",
                          UNDETERMINED, note="no test result")
    va, vb = a["test_acc_values"], b["test_acc_values"]
    if len(va) >= 2 and len(vb) >= 2:
        p = M.welch_t_test(va, vb)
        if p == p:
            return Comparison(a["cfg"], b["cfg"], a["test_acc"], b["test_acc"], "seeds", PENDING,
                              diff=a["test_acc"] - b["test_acc"], p=p)
        k = min(len(a["trial_ids"]), len(b["trial_ids"]))
        arr = paired_arrays(predictions, a["trial_ids"][:k], b["trial_ids"][:k])
        if arr is not None:
            return _paired(a, b, arr, "no spread across seeds (Welch undefined): paired test over matched runs")
        return Comparison(a["cfg"], b["cfg"], a["test_acc"], b["test_acc"], "", UNDETERMINED,
                          diff=a["test_acc"] - b["test_acc"],
                          note="no spread across seeds (Welch undefined) and no predictions for a paired test")
    arr = paired_arrays(predictions, a["trial_ids"][:1], b["trial_ids"][:1]) if len(va) == len(vb) == 1 else None
    if arr is not None:
        return _paired(a, b, arr)
    if n_test and len(va) == 1 and len(vb) == 1:
        d, lo, hi = M.diff_interval(va[0] * n_test, n_test, vb[0] * n_test, n_test)
        return Comparison(a["cfg"], b["cfg"], va[0], vb[0], "unpaired", PENDING, diff=d, lo=lo, hi=hi)
    why = "n_test unknown" if not n_test else "one side has one run, the other several"
    return Comparison(a["cfg"], b["cfg"], a["test_acc"], b["test_acc"], "", UNDETERMINED,
                      diff=a["test_acc"] - b["test_acc"], note=why)


def adjust(comps: list[Comparison], n: int | None = None, alpha: float = ALPHA) -> list[Comparison]:
    """Holm-adjust the p-values of one family and set each verdict. Comparisons without a p-value
    (Newcombe's unpaired interval on ``n`` examples) are judged at the Bonferroni-widened level
    1 - alpha/m instead (m = the family's size)."""
    todo = [c for c in comps if c.verdict == PENDING]
    m = len(todo)
    for c, pa in zip(todo, M.holm([c.p for c in todo], alpha)):
        if c.method == "unpaired":
            if m > 1 and n:
                _, c.lo, c.hi = M.diff_interval(c.acc_a * n, n, c.acc_b * n, n, confidence=1 - alpha / m)
            c.verdict = BEYOND if (c.lo > 0 or c.hi < 0) else WITHIN if ok(c.lo) else UNDETERMINED
        elif pa == pa:
            c.p_adj = pa
            c.verdict = BEYOND if pa < alpha else WITHIN
        else:
            c.verdict = UNDETERMINED
    assert all(c.verdict in VERDICTS for c in comps)
    return comps


def compare_family(rows: list[dict], pairs: list[tuple[int, int]], predictions, n_test) -> list[Comparison]:
    """Compare the given index pairs of ``rows`` as one family (Holm / Bonferroni over the family)."""
    return adjust([compare(rows[i], rows[j], predictions, n_test) for i, j in pairs], n_test)


# ----------------------------------------------------------------------------- batch-size ordering

@dataclass
class Ordering:
    model: str
    scheduler: str
    rows: list[dict]              # configs, best test accuracy first
    adjacent: list[Comparison]    # rows[i] vs rows[i+1]
    span: Comparison              # best vs worst (same family)
    family: str


def batch_orderings(cfgs: pd.DataFrame, predictions, n_test) -> list[Ordering]:
    """Per model · scheduler with >= 2 batch sizes (one config each): batch sizes by test accuracy;
    the comparisons of neighbours in that ranking plus best-vs-worst form one Holm family."""
    out = []
    for (model, sched), p in cfgs.groupby(["model", "scheduler"], sort=True):
        p = p[p["test_acc"].notna()]
        if p["batch_size"].nunique() < 2 or p["batch_size"].duplicated().any():
            continue
        rows = rank(p.to_dict("records"), lambda r: (-r["test_acc"], -r["best_val_acc"]))
        pairs = [(i, i + 1) for i in range(len(rows) - 1)]
        if len(rows) > 2:  # with two batch sizes the one adjacent pair is also best vs worst
            pairs.append((0, len(rows) - 1))
        comps = compare_family(rows, pairs, predictions, n_test)
        what = "neighbours in this ranking and best vs worst" if len(rows) > 2 else "one pair"
        out.append(Ordering(model, sched, rows, comps[:len(rows) - 1], comps[-1],
                            f"{model} · {sched}: {len(pairs)} comparison{'s' if len(pairs) > 1 else ''} ({what})"))
    return out


# ----------------------------------------------------------------------------- seeds

@dataclass
class SeedSummary:
    cfg: str
    stage: str
    n: int
    val_mean: float
    val_hw: float
    test_mean: float
    test_hw: float
    collapsed: int
    collapse_lo: float
    collapse_hi: float
    wide: bool                    # 2-3 runs: the t interval is wide


def seed_summaries(trials: pd.DataFrame, collapsed_ids: set) -> list[SeedSummary]:
    """Configs with >= 2 runs: the repeat stage where it exists (all epochs, no early stopping),
    else the main stage's seed axis."""
    rep = trials[trials["stage"] == "repeat"]
    src = rep if len(rep) else trials
    out = []
    for cfg, g in src.groupby("cfg", sort=False):
        g = g[g["best_val_acc"].notna()]
        if len(g) < 2:
            continue
        vm, vh, n = M.t_interval(g["best_val_acc"])
        tm, th, _ = M.t_interval(g["test_acc"])
        k = int(g["trial_id"].isin(collapsed_ids).sum())
        lo, hi = M.wilson_interval(k, n)
        out.append(SeedSummary(cfg, str(g["stage"].iloc[0]), n, vm, vh, tm, th, k, lo, hi, n <= 3))
    return out


@dataclass
class OrderSurvival:
    main_order: list[str]         # repeated configs by the main stage's best val acc (one run)
    repeat_order: list[str]       # the same configs by mean best val acc over the repeat seeds
    adjacent: list[Comparison]    # repeat order, val acc over seeds (Holm family)
    survives: bool


def order_survival(trials: pd.DataFrame, n_val: int | None) -> OrderSurvival | None:
    """Does the main stage's val order of the repeated configs survive the seeds?"""
    rep = trials[(trials["stage"] == "repeat") & trials["best_val_acc"].notna()]
    main = trials[(trials["stage"] != "repeat") & trials["best_val_acc"].notna()]
    names = [c for c in dict.fromkeys(rep["cfg"]) if c in set(main["cfg"])]
    if len(names) < 2:
        return None
    mrow = main.groupby("cfg").agg(v=("best_val_acc", "mean"), l=("best_val_loss", "mean"))
    rrow = rep.groupby("cfg").agg(v=("best_val_acc", "mean"), l=("best_val_loss", "mean"))
    # both orders as select_best ranks: val accuracy, ties (within TIE_TOL) by the lower val loss
    main_order = rank(names, lambda c: (-mrow.loc[c, "v"], mrow.loc[c, "l"]))
    repeat_order = rank(names, lambda c: (-rrow.loc[c, "v"], rrow.loc[c, "l"]))
    vals = {c: [float(x) for x in rep.loc[rep["cfg"] == c, "best_val_acc"]] for c in names}
    comps = []
    for a, b in zip(repeat_order, repeat_order[1:]):
        va, vb = vals[a], vals[b]
        c = Comparison(a, b, float(np.mean(va)), float(np.mean(vb)), "seeds", PENDING,
                       diff=float(np.mean(va) - np.mean(vb)))
        c.p = M.welch_t_test(va, vb)
        if c.p != c.p and len(va) >= 2 and len(vb) >= 2 and n_val:
            # no spread across seeds: val predictions are not stored, so the fallback is Newcombe on n_val
            c.method, c.note = "unpaired", "no spread across seeds (Welch undefined): unpaired Newcombe on n_val"
            c.diff, c.lo, c.hi = M.diff_interval(c.acc_a * n_val, n_val, c.acc_b * n_val, n_val)
        elif c.p != c.p:
            c.method, c.verdict, c.note = "", UNDETERMINED, "fewer than 2 runs or n_val unknown"
        comps.append(c)
    adjust(comps, n_val)
    return OrderSurvival(main_order, repeat_order, comps, main_order == repeat_order)


# ----------------------------------------------------------------------------- tuning budget

@dataclass
class ExpectedMax:
    group: str
    n_trials: int
    curve: list[float] = field(default_factory=list)  # E[best val acc] for n = 1..n_trials


def expected_max_curves(trials: pd.DataFrame, by: str = "model") -> list[ExpectedMax]:
    """Expected best val accuracy of n trials drawn from the main stage (Dodge et al. 2019)."""
    t = trials[(trials["stage"] != "repeat") & trials["best_val_acc"].notna()]
    return [ExpectedMax(str(k), len(g), M.expected_max(g["best_val_acc"])) for k, g in t.groupby(by, sort=True)]
