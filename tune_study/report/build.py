"""From a loaded study to every analysis result the report renders (no I/O here but the report's
own outputs in ``write_outputs``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from .. import metrics as M
from . import analysis as A
from . import lr_gap as G
from . import noise as N
from . import questions as Q
from .load import StudyResults

MAX_CONFIGS_ALL_PAIRS = 16  # the all-pairs family (n(n-1)/2 paired tests) only up to this many configs


@dataclass
class Analysis:
    study: StudyResults
    trials: pd.DataFrame            # labelled (cfg) with the collapse columns
    main: pd.DataFrame              # the grid / search stage's trials
    cfgs: pd.DataFrame              # configs of the main stage
    n_test: int | None
    n_val: int | None
    majority: float
    majority_measured: bool
    margin: float
    best: A.Best | None
    runner_up: A.Comparison | None
    orderings: list
    all_pairs: list | None
    seeds: list
    survival: A.OrderSurvival | None
    budget: list
    collapse: Q.CollapseAnswer
    loss_acc: Q.LossAccAnswer
    calibration: list
    steps: list
    asha: Q.AshaNote | None
    noise: N.NoiseAnswer            # why a batch size wins: the gradient noise scale and its check
    lr_gap: list                    # G.ScalingGroup per model · scheduler, with lr_scaling on the axes
    figures: dict = field(default_factory=dict)

    @property
    def paired(self) -> bool:
        return self.study.predictions is not None


def analyse(study: StudyResults, margin: float = 0.02) -> Analysis:
    t = A.label_trials(study)
    majority, measured = A.majority_of(t)
    coll = Q.collapse_table(t, study.history, majority, margin)
    t = t.merge(coll, on="trial_id", how="left")
    preds = study.predictions
    n_test, n_val = A.n_test_of(t, preds), A.n_val_of(t)
    main = t[t["stage"] != "repeat"]
    cfgs = A.configs(main)
    best = A.select_best(cfgs) if len(cfgs) else None
    runner = None
    if best is not None and len(cfgs) > 1:
        rest = cfgs[cfgs["cfg"] != best.cfg]
        second = A.select_best(rest)
        if second is not None:
            runner = A.compare_family([best.row, second.row], [(0, 1)], preds, n_test)[0]
    all_pairs = None
    done = cfgs[cfgs["test_acc"].notna()].to_dict("records") if len(cfgs) else []
    if 2 <= len(done) <= MAX_CONFIGS_ALL_PAIRS:
        pairs = [(i, j) for i in range(len(done)) for j in range(i + 1, len(done))]
        all_pairs = A.compare_family(done, pairs, preds, n_test)
    grid_like = study.kind == "grid"
    return Analysis(
        study=study, trials=t, main=main, cfgs=cfgs, n_test=n_test, n_val=n_val, majority=majority,
        majority_measured=measured, margin=margin, best=best, runner_up=runner,
        orderings=A.batch_orderings(cfgs, preds, n_test) if grid_like and len(cfgs) else [],
        all_pairs=all_pairs, seeds=A.seed_summaries(t, set(coll.loc[coll["collapse_kind"].isin(
            ["collapsed", "non_finite"]), "trial_id"])),
        survival=A.order_survival(t, n_val), budget=A.expected_max_curves(t),
        collapse=Q.q_collapse(t), loss_acc=Q.q_loss_vs_acc(_one_run(main), preds),
        calibration=Q.calibration_by_scheduler(main, preds, n_test),
        steps=Q.q_steps(study.history, main, n_val) if grid_like else [], asha=Q.asha_note(t),
        noise=N.analyse_noise(study, main, cfgs, preds, n_test, n_val) if grid_like else N.NoiseAnswer(
            "a search study: its configs differ in more than the batch size"),
        lr_gap=G.analyse_lr_gap(study, main, cfgs, preds, n_test) if grid_like else [])


def _one_run(main: pd.DataFrame) -> pd.DataFrame:
    """(b) compares single runs: with seeds, the first run of each config."""
    return main.drop_duplicates("cfg", keep="first")


def test_table(an: Analysis) -> pd.DataFrame:
    """One row per trial: axes, progress, best-val epoch, test metrics with Wilson 95% CI, collapse."""
    t = an.trials.copy()
    lo, hi = [], []
    for a in t["test_acc"]:
        ci = M.wilson_interval(a * an.n_test, an.n_test) if an.n_test and A.ok(a) else (math.nan, math.nan)
        lo.append(ci[0])
        hi.append(ci[1])
    t["test_acc_lo"], t["test_acc_hi"] = lo, hi
    axes = [c for c in dict.fromkeys(["model", "batch_size", "scheduler", *an.study.axes]) if c in t]
    cols = ["trial_id", "stage", *axes, "status", "epochs_run", "epochs_planned", "stopped_early", "best_epoch",
            "best_val_acc", "best_val_loss", "test_acc", "test_acc_lo", "test_acc_hi", "test_loss", "test_ece",
            "test_confidence", "optimizer_steps", "samples_seen", "collapsed", "collapse_epoch", "collapse_kind"]
    return t[[c for c in dict.fromkeys(cols) if c in t]]


def write_outputs(an: Analysis, figures: bool = True) -> dict:
    """test_table.csv and the figures into the study folder; returns {figure key: file name}."""
    from . import figures as F

    d = an.study.path
    test_table(an).to_csv(d / "test_table.csv", index=False)
    if an.budget:
        rows = [{"group": c.group, "n_trials": n, "expected_best_val_acc": round(v, 4)}
                for c in an.budget for n, v in enumerate(c.curve, 1)]
        pd.DataFrame(rows).to_csv(d / "expected_max_table.csv", index=False)
    if not figures:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    t, h = an.trials, an.study.history
    colors = F.batch_colors(t["batch_size"].dropna())
    out = {}
    for name, xkey, xlabel, logx in (("epoch", "epoch", "epoch", False),
                                     ("steps", "optimizer_steps", "optimizer steps (log scale)", True),
                                     ("samples", "samples_seen", "training samples seen", False)):
        p = F.fig_curves(h, an.main, xkey, xlabel, d / f"fig_curves_{name}.png", colors, an.majority, logx)
        if p:
            out[name] = p.name
    if an.study.kind == "grid":
        tt = test_table(an)
        ci = dict(zip(tt["trial_id"], zip(tt["test_acc_lo"], tt["test_acc_hi"])))
        p = F.fig_test_vs_batch(an.main, d / "fig_test_vs_batch.png", ci)
        if p:
            out["test"] = p.name
    if an.study.kind == "search":
        p = F.fig_search_history(an.main, d / "fig_search_history.png")
        if p:
            out["search"] = p.name
    if not an.noise.missing:
        p = F.fig_noise_scale(h, an.main, d / "fig_noise_scale.png", colors)
        if p:
            out["noise"] = p.name
    p = F.fig_reliability(an.main, d / "fig_reliability.png", colors)
    if p:
        out["reliability"] = p.name
    p = F.fig_expected_max(an.budget, d / "fig_expected_max.png")
    if p:
        out["budget"] = p.name
    return out
