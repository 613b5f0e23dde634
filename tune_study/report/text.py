"""Sentences from analysis results: every verdict word printed comes from a result object."""
from __future__ import annotations

from .analysis import BEYOND, SYMBOL, UNDETERMINED, WITHIN, Comparison, ok


def f3(x, nd=3) -> str:
    return f"{x:.{nd}f}" if ok(x) else "–"


def sgn(x, nd=3) -> str:
    return f"{x:+.{nd}f}" if ok(x) else "–"


def pval(p) -> str:
    return "–" if not ok(p) else (f"{p:.2g}" if p >= 1e-4 else "< 0.0001")


def how(c: Comparison) -> str:
    """The evidence behind a comparison's verdict, in brackets' words."""
    if c.method == "paired":
        b, cc = c.n_discordant
        s = (f"exact McNemar on {b + cc} discordant test examples ({b} vs {cc})"
             + (f", p = {pval(c.p)}" if ok(c.p) else "")
             + (f", Holm-adjusted {pval(c.p_adj)}" if ok(c.p_adj) and c.p_adj != c.p else "")
             + f"; paired bootstrap 95% CI of the difference [{sgn(c.lo)}, {sgn(c.hi)}]"
             + (", not adjusted" if ok(c.p_adj) and c.p_adj != c.p else ""))
    elif c.method == "unpaired":
        s = f"Newcombe 95% CI of the difference [{sgn(c.lo)}, {sgn(c.hi)}], unpaired: no usable predictions of both"
    elif c.method == "seeds":
        s = (f"Welch over seeds, p = {pval(c.p)}"
             + (f", Holm-adjusted {pval(c.p_adj)}" if ok(c.p_adj) and c.p_adj != c.p else ""))
    else:
        s = ""
    return "; ".join(x for x in (c.note, s) if x)


def comparison(c: Comparison) -> str:
    """'A 0.800 vs B 0.700 (difference +0.100): beyond noise (how)'."""
    d = f" (difference {sgn(c.diff)})" if ok(c.diff) else ""
    h = how(c)
    return f"{c.a} {f3(c.acc_a)} vs {c.b} {f3(c.acc_b)}{d}: {c.verdict}" + (f" ({h})" if h else "")


def symbol(c: Comparison) -> str:
    return SYMBOL[c.verdict]


def interval(mean, hw) -> str:
    return f"{f3(mean)} ± {f3(hw)}" if ok(hw) else f3(mean)


def rate(k, n, lo, hi) -> str:
    return f"{k} of {n}" + (f" (Wilson 95% [{f3(lo, 2)}, {f3(hi, 2)}])" if ok(lo) else "")


def calib_word(verdict: str, gap: float) -> str:
    if verdict == BEYOND:
        return "over-confident beyond noise" if gap > 0 else "under-confident beyond noise"
    if verdict == WITHIN:
        return "confidence within noise of accuracy"
    return UNDETERMINED

