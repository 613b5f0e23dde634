"""The report's few headline lines, printed in the console at the end of a study: the best config
by val with its test accuracy and interval, each batch-size ordering with its verdict, and the noise
scale's line per model · scheduler. The same sentences as report.md's findings, shortened."""
from __future__ import annotations

from .. import metrics as M
from .analysis import ok
from .text import f3, symbol


def _wilson(acc: float, n) -> str:
    if not ok(acc) or not n:
        return ""
    lo, hi = M.wilson_interval(acc * int(n), int(n))
    return f" (Wilson 95% [{lo:.3f}, {hi:.3f}], n_test {int(n)})"


def headline(an) -> list[str]:
    if an.best is None:
        return ["best config: none (no trial reported a val accuracy)"]
    r = an.best.row
    runs = f" over {r['n']} runs" if r["n"] > 1 else ""
    wilson = _wilson(r["test_acc"], an.n_test) if r["n"] == 1 else ""
    L = [f"best config by val: {an.best.cfg}: val {f3(r['best_val_acc'])}, test {f3(r['test_acc'])}{runs}{wilson}"]
    for o in an.orderings:
        parts = [str(int(o.rows[0]["batch_size"]))]
        parts += [f"{symbol(c)} {int(row['batch_size'])}" for c, row in zip(o.adjacent, o.rows[1:])]
        L.append(f"batch sizes by test accuracy, {o.model} · {o.scheduler}: " + " ".join(parts)
                 + f" (> beyond noise, ≈ within noise); best vs worst: {o.span.verdict}")
    if an.noise.missing:
        L.append(f"noise scale: not measured ({an.noise.missing})")
    for s in an.noise.sections:
        checks = "; ".join(f"{c.series + ': ' if c.series else ''}prediction {c.verdict}" for c in s.checks) or "no check"
        b = f"{s.b_noise:.0f}" if ok(s.b_noise) else "undefined"
        L.append(f"noise scale, {s.model} · {s.scheduler}: B_noise {b} (median B_simple at the end); {checks}")
    return L
