"""The seed's three questions and the early-stopping note, rendered from their analysis results."""
from __future__ import annotations

from . import questions as Q
from .analysis import NOT_COMPARABLE, UNDETERMINED
from .text import calib_word, f3, pval, rate, sgn

ATTR_TEXT = {
    Q.ATTR_FEWER: "behind at matched samples but not at matched optimizer steps: the gap is one of fewer steps",
    Q.ATTR_ITSELF: "behind even at matched optimizer steps: an effect of the batch size itself",
    Q.ATTR_PER_STEP: "level at matched samples and ahead at matched optimizer steps",
    Q.ATTR_AHEAD: "ahead at matched samples",
    Q.ATTR_LEVEL: "within noise at both matched points",
}


def asha(an) -> list[str]:
    a = an.asha
    if a is None:
        return []
    stopped = "; ".join(f"{r['cfg']} after epoch {int(r['epochs_run'])} ({int(r['optimizer_steps']):,} optimizer steps, "
                        f"best epoch-end val {f3(r['best_val_acc'])})" for r in a.stopped)
    per = ", ".join(f"b{r['batch_size']}: {r['stopped']} of {r['n']} stopped, {r['epochs']:.1f} epochs on average, "
                    f"{r['steps_per_epoch']:,.0f} steps per epoch" for r in a.by_batch)
    s = (f"- **Early stopping (ASHA)**: {len(a.stopped)} of {len(an.main)} trials were stopped early: {stopped}. "
         f"Per batch size: {per}. ASHA compares trials at equal epochs; at its rungs the trials above had taken the "
         f"step counts listed. Stopped trials report the test numbers of their best-val weights up to the stop.")
    if a.completed:
        s += " Ran all planned epochs: " + ", ".join(f"{r['cfg']} ({int(r['optimizer_steps']):,} steps)" for r in a.completed) + "."
    return [s]


def collapse(an) -> list[str]:
    c = an.collapse
    head = "- **(a) Is a collapse to ~0.5 accuracy real or chance?** "
    if c.collapsed:
        s = (f"{len(c.collapsed)} trial(s) collapsed: " + "; ".join(
            f"{r['cfg']} at epoch {r['collapse_epoch']} ({r['collapse_kind']}; best val {f3(r['best_val_acc'])} at "
            f"epoch {r['best_epoch']:.0f} before it)" for r in c.collapsed) + ". ")
    else:
        s = (f"No trial collapsed after learning in this study ({len(an.trials)} trials; none fell back into the "
             f"{an.majority:.2f} ± {an.margin} band after leaving it, no loss was non-finite). ")
    if c.rates:
        s += "As a rate over runs: " + "; ".join(f"{r['cfg']} collapsed in {rate(r['k'], r['n'], r['lo'], r['hi'])}"
                                                 for r in c.rates) + ". "
    elif c.collapsed:
        s += "With one run per config, whether a collapse recurs for that config is unknown: repeat it over seeds. "
    if c.has_roberta:
        k, n, lo, hi = c.roberta_rate
        s += (f"The seed's collapse was RoBERTa's: here RoBERTa collapsed in {rate(k, n, lo, hi)} runs"
              + (" (one run: not a rate)." if n == 1 else "."))
    else:
        s += (f"The seed's collapse was RoBERTa's; this study has no RoBERTa model (models: {', '.join(c.models)}), "
              "so it cannot say whether that collapse recurs.")
    if c.never_learned:
        s += f" Never learned (at chance from the first epoch): {', '.join(c.never_learned)}."
    return [head + s.strip()]


def loss_vs_acc(an) -> list[str]:
    b = an.loss_acc
    head = "- **(b) Why did test loss rise while accuracy rose?** "
    if not b.candidates:
        s = "No config pair has both the higher test accuracy and the higher test loss: the seed's pattern does not occur here."
    elif not b.paired:
        s = (f"{b.candidates} config pair(s) have higher test accuracy together with higher test loss by point "
             "estimate; without usable per-example predictions the loss difference cannot be tested, so this study "
             "cannot say whether any such pair is beyond noise.")
    elif not b.family:
        s = (f"{b.candidates} config pair(s) have higher test accuracy together with higher test loss by point "
             "estimate; none has usable predictions for both configs, so this study cannot say whether any such "
             "pair is beyond noise.")
    elif b.confirmed:
        p = b.confirmed[0]
        s = (f"Of {b.candidates} pair(s) with higher accuracy and higher loss by point estimate, {len(b.confirmed)} "
             f"have both differences beyond noise ({_tests(b)}). The clearest: {p.a} vs {p.b}: {_gaps(p)}. " + _wrong(p))
    else:
        s = (f"Of {b.candidates} pair(s) with higher accuracy and higher loss by point estimate, none has both "
             f"differences beyond noise ({_tests(b)}): the seed's pattern is not shown by this study.")
        if b.not_confirmed:
            p = max(b.not_confirmed, key=lambda q: q.nll[0])
            s += f" Largest loss gap: {p.a} vs {p.b}: {_gaps(p)}."
    cal = []
    for g in an.calibration:
        excl = f"; {g.n_excluded} stopped early or unfinished, left out" if g.n_excluded else ""
        if not g.n_trials:
            cal.append(f"{g.scheduler}: no trial ran all its planned epochs{excl}, so no calibration statement")
        else:
            cal.append(f"{g.scheduler} ({g.n_trials} trial(s) that ran all planned epochs{excl}): accuracy "
                       f"{f3(g.acc)}, mean confidence {f3(g.conf)}, confidence − accuracy {sgn(g.gap[0])} "
                       f"[{sgn(g.gap[1])}, {sgn(g.gap[2])}] ({g.method or 'no interval'}): "
                       f"{calib_word(g.verdict, g.gap[0])}")
    if cal:
        s += " Per scheduler: " + "; ".join(cal) + "."
    return [head + s]


def _tests(b) -> str:
    return (f"exact McNemar for accuracy and a paired t-test of the per-example NLL, each Holm-adjusted over the "
            f"{b.family} pair(s) tested")


def _gaps(p) -> str:
    return (f"accuracy {sgn(p.acc[0])} [{sgn(p.acc[1])}, {sgn(p.acc[2])}] (Holm-adjusted p = {pval(p.p_acc)}, "
            f"{p.acc_verdict}), mean test NLL {sgn(p.nll[0])} [{sgn(p.nll[1])}, {sgn(p.nll[2])}] (Holm-adjusted p = "
            f"{pval(p.p_nll)}, {p.nll_verdict}); paired bootstrap 95% CIs, not adjusted")


def _wrong(p) -> str:
    a, b = p.conf_a, p.conf_b
    if a is None or b is None:
        return ""
    s = (f"Measured on the wrong answers: {p.a}'s {a.n_wrong} wrong answers carry mean confidence {f3(a.conf_wrong)} "
         f"(mean NLL {f3(a.nll_wrong)}), {p.b}'s {b.n_wrong} carry {f3(b.conf_wrong)} (mean NLL {f3(b.nll_wrong)})")
    if a.conf_wrong == a.conf_wrong and b.conf_wrong == b.conf_wrong:
        s += (f": the more accurate config is {'more' if a.conf_wrong > b.conf_wrong else 'less'} confident when "
              "wrong.")
    return s


def _point(m: Q.MatchedPoint, unit: str, small: int, large: int) -> str:
    if m.verdict == NOT_COMPARABLE:
        return (f"not comparable (b{small} measured from {m.range_small[0]:,.0f} to {m.range_small[1]:,.0f} {unit}, "
                f"b{large} from {m.range_large[0]:,.0f} to {m.range_large[1]:,.0f}: no overlap)")
    return (f"{m.x:,.0f} {unit}: {f3(m.acc_small)} vs {f3(m.acc_large)} (larger batch {sgn(m.diff)}, {m.verdict})")


def steps(an) -> list[str]:
    head = "- **(c) Batch size, or just fewer optimizer steps?** "
    if an.study.kind != "grid":
        return [head + "Not assessed for a search study (its configs differ in more than the batch size)."]
    if not an.steps:
        return [head + "Needs at least two batch sizes with history for one model · scheduler."]
    rows = [f"  - {p.model} · {p.scheduler}, batch {p.small} vs {p.large}: val acc at matched samples "
            f"{_point(p.samples, 'samples', p.small, p.large)}; at matched optimizer steps "
            f"{_point(p.steps, 'steps', p.small, p.large)}"
            + (f" → {ATTR_TEXT[p.attribution]}." if p.attribution else " → no attribution.") for p in an.steps]
    done = [p for p in an.steps if p.attribution]
    not_steps = sum(p.steps.verdict == NOT_COMPARABLE for p in an.steps)
    confs = sorted({f"{100 * m.confidence:.1f}%" for p in an.steps for m in (p.steps, p.samples)
                    if m.verdict not in (NOT_COMPARABLE, UNDETERMINED)})
    s = head + (f"Val accuracy of adjacent batch sizes at matched points (noise: Newcombe's unpaired interval on "
                f"n_val = {an.n_val or 'unknown'}, since val predictions are not stored"
                + (f"; Bonferroni-widened over each model · scheduler's measured points to {' / '.join(confs)}"
                   if confs else "") + f"). Of {len(an.steps)} adjacent-batch comparisons, ")
    measured = [p for p in an.steps if NOT_COMPARABLE not in (p.steps.verdict, p.samples.verdict)]
    if measured and not done:
        s += (f"{len(measured)} have both matched points measured, but n_val is unknown, so no difference can be "
              "judged against noise and this study cannot answer (c).")
        return [s] + rows
    if not done:
        s += ("none has both matched points measured" + (f" ({not_steps} have no overlap in optimizer steps)" if not_steps
                                                          else "") + ", so this study cannot answer (c): evaluate val "
              "more often (`evals_per_epoch`) so that adjacent batch sizes share a measured step range.")
        return [s] + rows
    counts = {k: sum(p.attribution == k for p in done) for k in ATTR_TEXT}
    s += f"{len(done)} have both matched points measured: " + "; ".join(
        f"{n} {ATTR_TEXT[k]}" for k, n in counts.items() if n) + "."
    if not_steps:
        s += f" {not_steps} are not comparable at matched steps (no overlap of measured step ranges) and are left out."
    if counts[Q.ATTR_ITSELF] and not counts[Q.ATTR_FEWER]:
        s += " Where a larger batch falls behind here, it does so even per optimizer step."
    elif counts[Q.ATTR_FEWER] and not counts[Q.ATTR_ITSELF]:
        s += " Where a larger batch falls behind here, fewer optimizer steps account for it."
    elif counts[Q.ATTR_FEWER] and counts[Q.ATTR_ITSELF]:
        s += " The pairs disagree: neither explanation holds for all of them."
    return [s] + rows

