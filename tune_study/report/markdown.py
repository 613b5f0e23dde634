"""report.md from an ``Analysis``: every sentence below is rendered from a result object; where the
data cannot answer, the sentence says so."""
from __future__ import annotations

from scipy import stats

from .. import metrics as M
from ..tables import md_table
from . import answers, why
from .analysis import BEYOND, UNDETERMINED, WITHIN
from .build import Analysis, test_table
from .text import comparison, f3, interval, rate, symbol


def render(an: Analysis) -> str:
    s = an.study
    L = [f"# Study report: {s.space.get('name', s.path.name)}", ""]
    if s.space.get("description"):
        L += [str(s.space["description"]), ""]
    L += _header(an)
    if not len(an.cfgs) or an.cfgs["test_acc"].notna().sum() == 0:
        return "\n".join(L + ["No trial has reported a test result yet: nothing to report.", ""])
    L += ["## Findings", ""]
    L += _best(an) + _orderings(an) + _noise(an) + _seeds(an) + _budget(an) + answers.asha(an)
    L += ["", "### The seed's three questions", ""]
    L += answers.collapse(an) + answers.loss_vs_acc(an) + answers.steps(an)
    L += why.section(an)
    L += _figures_and_tables(an) + _search(an) + _rules(an)
    return "\n".join(L) + "\n"


def _header(an: Analysis) -> list[str]:
    s, t = an.study, an.trials
    fixed = s.space.get("fixed") or {}
    fx = ", ".join(f"{k} {fixed[k]}" for k in ("lr", "epochs", "max_len", "precision", "evals_per_epoch") if k in fixed)
    stages = ", ".join(f"{n} {k}" for k, n in t["stage"].value_counts().items())
    status = ", ".join(f"{n} {k}" for k, n in t["status"].value_counts().items())
    src = ", ".join(f for f in s.sources.values() if f) or "none"
    L = [f"- Study: {s.kind} over {', '.join(s.axes) or '?'}" + (f"; {fx}" if fx else "") + ".",
         f"- Trials: {len(t)} ({stages}; {status or 'no status'}); data from {src}.",
         f"- Test set: n_test = {an.n_test or 'unknown'}; val: n_val = {an.n_val or 'unknown'}; majority-class rate "
         f"{an.majority:.3f} ({'measured on val' if an.majority_measured else 'assumed, not reported by this study'}).",
         "- Per-example test predictions: " + _predictions_line(an), ""]
    if s.notices:
        L += ["**What could not be used** (the report went on without it):", *[f"- {n}" for n in s.notices], ""]
    unfinished = t[~t["status"].isin(["TERMINATED", "ERROR"])]
    if len(unfinished):
        L += [f"**Interrupted study**: {len(unfinished)} trial(s) never finished "
              f"({', '.join(sorted(set(map(str, unfinished['status']))))}); this report covers what they reported.", ""]
    err = t[t["status"] == "ERROR"]
    if len(err):
        L += ["**Errored trials**: " + "; ".join(f"{r.cfg} ({r.trial_id})" for r in err.itertuples()), ""]
    return L


def _predictions_line(an: Analysis) -> str:
    tested = set(an.trials.loc[an.trials["test_acc"].notna(), "trial_id"])
    if an.paired:
        n = len(tested & set(an.study.predictions["trial_id"]))
        if n == len(tested):
            return "stored, so configs are compared with paired tests on the same test examples."
        return (f"usable for {n} of the {len(tested)} trials with a test result, so configs are compared with paired "
                "tests on the same test examples where both have them, otherwise with the unpaired rule.")
    if "predictions" in an.study.unusable:
        return "not usable (see below), so configs are compared with the unpaired rule, which is conservative."
    return "not stored, so configs are compared with the unpaired rule, which is conservative."


def _best(an: Analysis) -> list[str]:
    b = an.best
    if b is None:
        return ["- **Best config**: no trial reported a val accuracy, so none can be selected."]
    r = b.row
    s = (f"- **Best config** by val accuracy at epoch ends (selection uses val only, never test): **{b.cfg}** — val "
         f"{f3(r['best_val_acc'])} (val loss {f3(r['best_val_loss'])}), test {f3(r['test_acc'])}"
         + (f" over {r['n']} runs" if r["n"] > 1 else "") + ".")
    if b.tied_on_val:
        s += (f" Tied on val accuracy with {', '.join(b.tied_on_val)}; the tie is broken by "
              + ("the lower val loss." if b.broken_by == "val loss" else "table order (val loss tied too)."))
    L = [s]
    if an.runner_up is not None:
        L.append(f"  Its test accuracy against the runner-up by val: {comparison(an.runner_up)}.")
    return L


def _orderings(an: Analysis) -> list[str]:
    L = []
    for o in an.orderings:
        parts = [f"{int(o.rows[0]['batch_size'])} ({f3(o.rows[0]['test_acc'])})"]
        for c, r in zip(o.adjacent, o.rows[1:]):
            parts.append(f"{symbol(c)} {int(r['batch_size'])} ({f3(r['test_acc'])})")
        L.append(f"- **Batch-size ordering** by test accuracy, {o.model} · {o.scheduler}: batch " + " ".join(parts)
                 + f" (> beyond noise, ≈ within noise, ? undetermined; Holm over the family {o.family}). "
                 + f"Best vs worst batch: {o.span.verdict}.")
        L += [f"  - {comparison(c)}" for c in o.adjacent + ([o.span] if len(o.rows) > 2 else [])]
    return L


def _noise(an: Analysis) -> list[str]:
    if an.all_pairs is None:
        n = int(an.cfgs["test_acc"].notna().sum())
        return [f"- **Noise**: {n} configs with test results; the all-pairs family is "
                + ("not formed (more than 16 configs)." if n > 1 else "not formed (one config).")]
    c = an.all_pairs
    k = {v: sum(x.verdict == v for x in c) for v in (BEYOND, WITHIN, UNDETERMINED)}
    s = (f"- **Noise**: of {len(c)} pairs of configs, {k[BEYOND]} differ{'s' if k[BEYOND] == 1 else ''} in test accuracy beyond noise, "
         f"{k[WITHIN]} are within noise and {k[UNDETERMINED]} are undetermined (Holm over all {len(c)} pairs; "
         + (("paired tests" if all(x.method != "unpaired" for x in c) else "paired tests where both configs have "
             "usable predictions, unpaired Newcombe at the Bonferroni level otherwise") if an.paired
            else "unpaired Newcombe at the Bonferroni level") + ").")
    if an.n_test and not an.paired:
        acc = float(an.cfgs["test_acc"].median())
        lo, hi = M.wilson_interval(acc * an.n_test, an.n_test)
        s += (f" With n_test = {an.n_test}, the median test accuracy {acc:.3f} carries a Wilson 95% interval "
              f"[{lo:.3f}, {hi:.3f}].")
    return [s]


def _seeds(an: Analysis) -> list[str]:
    if not an.seeds:
        return ["- **Seeds**: one run per config, so run-to-run variance is not measured here; a `repeat:` stage "
                "or a `seed` axis measures it."]
    L = ["- **Seeds**: configs with several runs (mean ± half-width of the 95% t interval):"]
    for x in an.seeds:
        t = stats.t.ppf(0.975, x.n - 1)
        L.append(f"  - {x.cfg} ({x.stage} stage, {x.n} runs): val acc {interval(x.val_mean, x.val_hw)}, test acc "
                 f"{interval(x.test_mean, x.test_hw)}"
                 + (f" — wide: with {x.n} runs the interval uses t(0.975, {x.n - 1}) = {t:.2f}" if x.wide else "")
                 + f"; collapsed in {rate(x.collapsed, x.n, x.collapse_lo, x.collapse_hi)} runs.")
    sv = an.survival
    if sv is not None:
        steps = "; ".join(comparison(c) for c in sv.adjacent)
        n_res = sum(c.verdict == BEYOND for c in sv.adjacent)
        if sv.survives:
            verdict = ("the order survives the seeds" + (f", and {n_res} of its {len(sv.adjacent)} steps are beyond "
                       f"noise" if n_res else f", but none of its {len(sv.adjacent)} steps is beyond noise, so the "
                       f"seeds do not separate these configs"))
        else:
            verdict = (f"the order changes over the seeds; {n_res} of the {len(sv.adjacent)} steps of the new order "
                       f"are beyond noise")
        L.append(f"  Order of the repeated configs: by the main stage's val accuracy {' > '.join(sv.main_order)}; by "
                 f"mean val accuracy over the seeds {' > '.join(sv.repeat_order)} ({steps}): {verdict}.")
    return L


def _budget(an: Analysis) -> list[str]:
    if not an.budget:
        return []
    ns = sorted({n for c in an.budget for n in (1, 2, 4, 8, 16, c.n_trials) if n <= c.n_trials})
    rows = [{"group": f"{c.group} ({c.n_trials} trials)",
             **{f"n={n}": f3(c.curve[n - 1]) if n <= c.n_trials else "–" for n in ns}} for c in an.budget]
    return ["- **Tuning budget**: expected best val accuracy of n trials drawn (with replacement) from this "
            "study's main stage, per model (Dodge et al. 2019); every n in expected_max_table.csv"
            + (", plotted in fig_expected_max.png" if an.figures.get("budget") else "") + ":", "",
            md_table(rows), ""]


def _figures_and_tables(an: Analysis) -> list[str]:
    figs = an.figures
    L = ["", "## Training curves", ""]
    if "epoch" in figs:
        L += ["Train loss, val loss and val accuracy per epoch (every evaluation, fractional epochs included; dots at "
              "epoch ends); one line per batch size, one column per model · scheduler; dotted: majority-class rate; "
              "hollow square: a trial's last evaluation before early stopping.", "", f"![curves per epoch]({figs['epoch']})", ""]
    for k in ("steps", "samples"):
        if k in figs:
            L += [f"![curves against {k}]({figs[k]})", ""]
    tt = test_table(an).sort_values(["stage", "model", "scheduler", "batch_size"], kind="stable")
    rows = [{"config": c, "stage": r["stage"], "status": r["status"],
             "epochs": f"{int(r['epochs_run'])}/{int(r['epochs_planned'])}" if r["epochs_run"] == r["epochs_run"]
             and r["epochs_planned"] == r["epochs_planned"] else "–",
             "stopped early": "yes" if r["stopped_early"] else "no",
             "best val acc (epoch end)": f3(r["best_val_acc"]),
             "test acc [95% CI]": f"{f3(r['test_acc'])} [{f3(r['test_acc_lo'])}, {f3(r['test_acc_hi'])}]",
             "test loss": f3(r["test_loss"]), "ECE": f3(r["test_ece"]), "confidence": f3(r["test_confidence"]),
             "collapsed": r["collapse_kind"] or "no"}
            for c, (_, r) in zip(an.trials.set_index("trial_id").loc[tt["trial_id"], "cfg"], tt.iterrows())]
    L += ["## Test results", "", "Each trial's best-val weights on test (selected by val accuracy, val loss breaking "
          "ties). Also in [test_table.csv](test_table.csv).", "", md_table(rows), ""]
    for k, title in (("test", "test metrics against batch size"), ("reliability", "reliability diagrams"),
                     ("budget", "expected best val accuracy vs trials")):
        if k in figs:
            L += [f"![{title}]({figs[k]})", ""]
    return L


def _search(an: Analysis) -> list[str]:
    """Search studies: the best config per model, selected by val accuracy (val loss breaking ties)."""
    if an.study.kind != "search":
        return []
    from .analysis import select_best

    rows = []
    for model, g in an.cfgs.groupby("model", sort=True):
        b = select_best(g)
        if b is not None:
            rows.append({"model": model, "config": b.cfg, "best val acc": f3(b.row["best_val_acc"]),
                         "val loss": f3(b.row["best_val_loss"]), "test acc": f3(b.row["test_acc"]),
                         "test loss": f3(b.row["test_loss"])})
    L = ["## Search", "", "Best config per model (by val accuracy; test is shown, never used to select):", "",
         md_table(rows), ""]
    if "search" in an.figures:
        L += [f"![search history]({an.figures['search']})", ""]
    return L


def _rules(an: Analysis) -> list[str]:
    return ["## Rules used", "",
            "- **Selection**: best val accuracy at an epoch end (the best weights and checkpoints exist only there; "
            "evaluations inside an epoch serve the curves and (c)); ties by lower val loss, then table order. Test "
            "never selects.",
            "- **Comparing two configs' test accuracy**: with stored predictions, exact McNemar (McNemar 1947; "
            "Dietterich 1998) decides beyond/within noise and a paired bootstrap (2,000 resamples, fixed seed) gives "
            "the 95% CI of the difference; identical answers on every example count as within noise. Without "
            "predictions, Newcombe's unpaired interval on n_test. With several runs per config, Welch's test over runs; "
            "where both configs have no spread across seeds Welch is undefined and the paired test is used. A family "
            "(named where it is used) is Holm-adjusted (Holm 1979); unpaired intervals are widened to 1 − 0.05/m.",
            "- **Undetermined** means the data cannot decide (n unknown, no predictions where they are needed, one side "
            "without runs); **not comparable** means there is no measured point to compare at.",
            f"- **Collapse**: val accuracy within ±{an.margin} of the majority-class rate from some epoch end through "
            "the last, after having left that band (`collapsed`), from the first epoch (`never_learned`), or a "
            "non-finite loss. Columns in test_table.csv.",
            "- **Step matching (c)**: adjacent batch sizes of one model · scheduler are compared at the furthest "
            "optimizer-step count and the furthest sample count inside BOTH curves' measured ranges (every evaluation, "
            "fractional epochs included), interpolating only between two measured points of one curve; no overlap "
            "means not comparable. Val-accuracy differences use Newcombe's unpaired interval on n_val (val predictions "
            "are not stored), Bonferroni-widened to 1 − 0.05/m over the m measured points of one model · scheduler.",
            "- **Loss vs accuracy (b)**: a pair counts only if exact McNemar (accuracy) and a paired t-test of the "
            "per-example test NLL are both beyond noise after Holm adjustment over all candidate pairs tested (one "
            "family per test); paired bootstrap 95% CIs give the sizes.",
            "- **Calibration by scheduler**: only trials that ran all their planned epochs; confidence − accuracy with "
            "a paired bootstrap CI over test examples (Wilson interval of the accuracy without predictions).", ""]

