"""The report's "why a batch size wins" section: the gradient noise scale, the trade-off it implies,
the check of its prediction, and the learning-rate scaling question, rendered from noise.py and
lr_gap.py results (every verdict word comes from a result)."""
from __future__ import annotations

from ..tables import md_table
from . import lr_gap as G
from . import noise as N
from .analysis import ok
from .text import comparison, f3, pval, sgn

HEAD = "### Why a batch size wins: the gradient noise scale"


def b_value(x) -> str:
    """A noise scale or batch; NaN is 'undefined', never a number."""
    if not ok(x):
        return "undefined"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def ratio(x) -> str:
    return f"{x:.2f}" if ok(x) else "–"


def used(lr, beta2) -> str:
    """The optimizer settings a trial recorded: 'lr_peak 0.0002, beta2 0.984'."""
    return f"lr_peak {f'{lr:.3g}' if ok(lr) else 'not recorded'}" + (f", beta2 {beta2:.4g}" if ok(beta2) else "")


def section(an) -> list[str]:
    n, groups = an.noise, an.lr_gap
    L = ["", HEAD, ""]
    done = set()
    if an.study.kind != "grid":
        return L + ["- Not assessed for a search study (its configs differ in more than the batch size).", ""]
    if n.missing:
        L.append(f"- **Gradient noise scale**: not measured in this study, as {n.missing}; so this report cannot "
                 "say whether it explains the batch-size ordering.")
    else:
        L += _intro(an)
        for s in n.sections:
            L += ["", f"#### {s.model} · {s.scheduler}", ""] + _noise(s)
            for g in groups:
                if (g.model, g.scheduler) == (s.model, s.scheduler):
                    L += _lr(g)
                    done.add(id(g))
    for g in groups:
        if id(g) not in done:
            L += _lr(g)
    if not n.missing and not G.on_axis(an.study):
        L.append("- **Learning rate and batch size**: `lr_scaling` is not an axis of this study, so whether a "
                 "learning rate scaled with the batch closes a large-batch gap is not asked here.")
    return L


def _intro(an) -> list[str]:
    L = ["B_simple = tr(Σ)/|G|², the gradient noise scale of McCandlish et al. 2018 (\"An Empirical Model of "
         "Large-Batch Training\", App. A.1), measured in the gradient-accumulation windows: the micro-batches' and "
         "the window's squared gradient norms give unbiased estimates of |G|² and tr(Σ), summed over the windows "
         "of an interval before they are divided. The paper's fit (its Eq. 2.11) says what a batch B costs to "
         "reach a given loss: S/S_min = 1 + B_noise/B optimizer steps and E/E_min = 1 + B/B_noise examples.", "",
         f"**Prediction rule at equal epochs** (equal examples): of two adjacent batch sizes, the larger needs "
         f"q = (1 + B_large/B_noise) / (1 + B_small/B_noise) times the examples of the smaller. q ≥ "
         f"{N.PRED_BEHIND_Q:g} (a batch well above B_noise: it has seen at most half of what it needs) predicts "
         f"the larger batch behind; q < {N.PRED_LEVEL_Q:g} (both well below B_noise) predicts them about level; "
         "in between no prediction is made. This assumes training has not converged (a loss gap shows as an "
         "accuracy gap only while the curves still climb). Measured at equal epochs: test accuracy of the "
         "best-val weights where both ran the same epochs (the report's comparison: exact McNemar on the shared "
         "test examples), else val accuracy at the last epoch end both reached (Newcombe's unpaired interval on "
         "n_val); one family per model · scheduler, its 0.05 split between the two kinds by their counts, Holm "
         "(test) or Bonferroni (val) within. A pair **agrees** when predicted behind and measured behind beyond "
         "noise; it **disagrees** when measured ahead beyond noise though predicted behind, or apart beyond noise "
         "though predicted level; otherwise it is **undetermined** (a difference within noise confirms neither). "
         "Overall: one disagreeing pair refutes the prediction; agreement needs an agreeing pair and none against.",
         "",
         "**Caveats**: B_simple assumes an isotropic Hessian and tends to overestimate the critical batch B_crit "
         "(the fuller B_noise = tr(HΣ)/GᵀHG, the paper's Eq. 2.8, is not measured), so a batch \"below B_noise\" "
         "here may already be past B_crit; it is defined for SGD, and these runs train with AdamW, whose "
         "per-parameter scaling changes the noise the update sees; it grows as the loss falls, so it is plotted "
         "against samples seen and quoted after the first epoch and at the end, which are different numbers; and "
         "a single window's estimate is very noisy, so every value is a ratio of sums over the windows of an "
         "interval (counted in the table). Where the summed |G|² or tr(Σ) comes out ≤ 0, B_simple is "
         "**undefined**, not a number."]
    if an.figures.get("noise"):
        L += ["", "B_simple against training samples seen (log scale), one line per trial; dashed: the grid's "
              "batch sizes.", "", f"![noise scale]({an.figures['noise']})"]
    return L


def _noise(s: N.NoiseSection) -> list[str]:
    rows = [{"config": t.cfg, "epochs run": f"{t.epochs_run:g}" if ok(t.epochs_run) else "–",
             "B_simple after epoch 1": b_value(t.first), "B_simple at the end (last epoch run)": b_value(t.end),
             "windows in the last epoch": t.windows_end} for t in s.trials]
    L = [md_table(rows), ""]
    if not ok(s.b_noise):
        L.append(f"- **B_noise** is undefined for {s.model} · {s.scheduler}: {s.n_defined} of {len(s.trials)} trial(s) "
                 "have a defined B_simple over their last epoch, and the median is taken only over more than half of "
                 "them (undefined is an estimated |G|² or tr(Σ) ≤ 0; |G|² ≤ 0, the gradient's signal below its noise, "
                 "means a large noise scale, so the defined ones alone could lean low); no trade-off and no "
                 "prediction is given.")
    else:
        L.append(f"- **B_noise** used below = B_simple, the median over the {s.n_defined} of {len(s.trials)} trial(s) "
                 f"with a defined value at the end of their last epoch: **{b_value(s.b_noise)}** (after the first "
                 f"epoch the median is {b_value(s.b_noise_first)}). The trade-off of each batch size:")
        L += ["", md_table([{"batch": b, "B/B_noise": ratio(r), "S/S_min = 1 + B_noise/B": ratio(st),
                             "E/E_min = 1 + B/B_noise": ratio(ex)} for b, r, st, ex in s.trade]), ""]
    for c in s.checks:
        L += _check(c)
    if not s.checks:
        L.append("- **Check at equal epochs**: needs two or more batch sizes of one config series with test results.")
    return L


CHECK_TEXT = {
    N.AGREE: "the measured ordering **agrees** with the noise scale's prediction",
    N.DISAGREE: "the measured ordering **disagrees** with the noise scale's prediction",
    N.UNDETERMINED: "**undetermined**: no adjacent pair confirms or refutes the prediction (each is within noise, "
                    "undetermined, or without a prediction)",
}


def _check(c: N.SeriesCheck) -> list[str]:
    k = {v: sum(p.verdict == v for p in c.pairs) for v in (N.AGREE, N.DISAGREE, N.UNDETERMINED)}
    where = f" ({c.series})" if c.series else ""
    L = [f"- **Check at equal epochs**{where}: {CHECK_TEXT[c.verdict]} ({k[N.AGREE]} pair(s) agree, "
         f"{k[N.DISAGREE]} disagree, {k[N.UNDETERMINED]} undetermined; family {c.family})."]
    for p in c.pairs:
        if not ok(p.q):
            pred = "B_noise undefined → no prediction"
        elif p.prediction == N.P_NONE:
            pred = f"q = {ratio(p.q)} → no prediction (between {N.PRED_LEVEL_Q:g} and {N.PRED_BEHIND_Q:g})"
        else:
            pred = f"q = {ratio(p.q)} → predicted {p.prediction}"
        L.append(f"  - batch {p.small} vs {p.large}: {pred}; measured: {_measured(p)} → **{p.verdict}**.")
    return L


def _measured(p: N.PairCheck) -> str:
    c = p.comparison
    if p.basis == "test":
        return f"test accuracy, both ran {p.epoch:g} epoch(s): {comparison(c)}"
    if c.method != "unpaired":
        return f"{c.note}: {c.verdict}"
    return (f"{c.note}: {f3(c.acc_a)} vs {f3(c.acc_b)} (difference {sgn(c.diff)}): {c.verdict} (Newcombe "
            f"{100 * p.confidence:.1f}% interval [{sgn(c.lo)}, {sgn(c.hi)}], unpaired: val predictions are not stored)")


def _lr(g: G.ScalingGroup) -> list[str]:
    name = " · ".join(x for x in (g.model, g.scheduler, g.rest) if x)
    c0 = g.cases[0]
    L = [f"- **Did the scaled learning rate close the large-batch gap?** {name}: against batch {c0.small} unscaled "
         f"({used(c0.lr_small, c0.beta2_small)}); Holm over the family {g.family}."]
    for c in g.cases:
        e = c.effect
        nll = (f"; test NLL scaled − unscaled {sgn(e.nll_diff)} [{sgn(e.nll_lo)}, {sgn(e.nll_hi)}] (paired t-test "
               f"of the per-example NLL, Holm-adjusted over the family's effects p = {pval(c.nll_p)}: "
               f"{c.nll_verdict})" if e.method == "paired" else "")
        L.append(f"  - batch {c.large}, lr_scaling {c.rule} ({used(c.lr_scaled, c.beta2_scaled)}) vs none "
                 f"({used(c.lr_unscaled, c.beta2_unscaled)}): **{c.verdict}**. Scaled vs unscaled: {comparison(e)}{nll}. Gap to "
                 f"batch {c.small} before: {comparison(c.before)}; after: {comparison(c.after)}.")
    return L
