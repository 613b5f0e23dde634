"""Small statistics shared by the training loop and the report: calibration (ECE), intervals, paired
tests (McNemar, bootstrap), Holm adjustment, expected best score vs budget. Sources cited per function."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def says_positive(prob_pos):
    """The model's answer from its positive-class probability (numpy array or torch tensor):
    positive iff prob_pos > 0.5, so exactly 0.5 is negative, as torch.argmax takes the first index
    on a tie. The trainer's accuracy and the report's per-example answers both use this one rule:
    argmax over two float32 softmax probabilities (which need not sum to exactly 1) could differ
    from it by a rounding step near 0.5, and prob_pos is all an export keeps."""
    return prob_pos > 0.5


def calibration(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """Expected calibration error over ``n_bins`` equal-width confidence bins, plus the bins.

    ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|, with confidence = the top-class probability
    (Guo et al. 2017). A bin holds confidences in (lo, hi]; the first bin also takes exactly 0.
    Returns ece, mean_confidence, accuracy and ``bins``: [(lo, hi, count, mean conf, acc), ...].
    """
    import torch  # here, so that the report can import this module without torch's start-up cost

    probs = probs.double()
    conf = probs.max(dim=1).values
    correct = (says_positive(probs[:, 1]) == labels).double()
    n = len(labels)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    ece, bins = 0.0, []
    for i in range(n_bins):
        lo, hi = float(edges[i]), float(edges[i + 1])
        mask = (conf > lo) & (conf <= hi) if i else (conf >= lo) & (conf <= hi)
        k = int(mask.sum())
        if k:
            c, a = float(conf[mask].mean()), float(correct[mask].mean())
            ece += k / n * abs(a - c)
            bins.append((lo, hi, k, c, a))
    return {"ece": ece, "mean_confidence": float(conf.mean()), "accuracy": float(correct.mean()),
            "bins": bins}


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, int]:
    """Mean and half-width of a two-sided t confidence interval (scipy.stats.t.interval); the
    half-width is nan for n < 2, 0 for values without spread."""
    from scipy import stats  # scipy comes with the stack (optuna / pandas users have it)

    xs = [float(v) for v in values if v == v]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, math.nan, n
    sem = float(stats.sem(xs))
    if sem == 0:
        return mean, 0.0, n
    lo, hi = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return mean, float(hi - lo) / 2, n


# ----------------------------------------------------------------------------- report helpers

def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (e.g. an accuracy over ``n`` examples):
    scipy.stats.binomtest(k, n).proportion_ci(method="wilson").

    ``successes`` may be a count or acc * n (rounded). (nan, nan) for n < 1.
    """
    from scipy import stats

    if not n or n < 1 or successes != successes:
        return math.nan, math.nan
    k = min(max(round(float(successes)), 0), int(n))
    ci = stats.binomtest(k, int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def welch_t_test(a, b) -> float:
    """Two-sided p-value of Welch's unequal-variance t-test (Welch 1947).

    nan when either side has < 2 values, and nan when both sides have zero variance: the statistic
    is 0/0 there, so the test is undefined (not p = 0, not p = 1); the caller says "no spread across
    seeds" and falls back to a paired test."""
    from scipy import stats

    xs = [float(v) for v in a if v == v]
    ys = [float(v) for v in b if v == v]
    if len(xs) < 2 or len(ys) < 2:
        return math.nan
    if max(xs) == min(xs) and max(ys) == min(ys):
        return math.nan
    return float(stats.ttest_ind(xs, ys, equal_var=False).pvalue)


# ----------------------------------------------------------------------------- paired statistics

def mcnemar_exact(correct_a, correct_b) -> tuple[int, int, float]:
    """Exact McNemar test of "A and B are equally accurate" on one shared test set -> (b, c, p).

    b = #(A right, B wrong), c = #(A wrong, B right); under the null b ~ Binomial(b + c, 1/2)
    (McNemar 1947, Psychometrika 12:153; Dietterich 1998, Neural Computation 10:1895). p is nan when
    b + c = 0: the two made identical right/wrong answers, which is no evidence either way.
    """
    from scipy import stats

    a = np.asarray(correct_a, dtype=bool)
    bb = np.asarray(correct_b, dtype=bool)
    b, c = int((a & ~bb).sum()), int((~a & bb).sum())
    if b + c == 0:
        return b, c, math.nan
    return b, c, float(stats.binomtest(b, b + c, 0.5).pvalue)


def paired_bootstrap(x, y, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float]:
    """Difference of means mean(x) - mean(y) of per-example paired values, with a percentile
    bootstrap interval: resample example indices with replacement, the same indices for x and y
    (Efron & Tibshirani 1993, ch. 13). -> (difference, lo, hi); fixed ``seed`` for repeatability."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y) or not len(x):
        return math.nan, math.nan, math.nan
    d = x - y
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(axis=1)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(d.mean()), float(lo), float(hi)


def paired_t_test(x, y) -> float:
    """Two-sided p-value of the paired t-test of mean(x - y) = 0 (Student 1908) on per-example paired
    values, e.g. the NLL of two configs on the same test reviews. nan when there are < 2 pairs or the
    differences have no spread (identical answers: undefined, not p = 0)."""
    from scipy import stats

    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if len(d) < 2 or float(d.max() - d.min()) == 0.0:
        return math.nan
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def holm(pvalues, alpha: float = 0.05) -> list[float]:
    """Holm (1979) step-down adjusted p-values of one family, in the input order; nan stays nan and
    does not count towards the family size. Reject where adjusted p < alpha: equivalent to comparing
    the i-th smallest p with alpha / (m - i + 1) and stopping at the first failure."""
    ps = [float(p) for p in pvalues]
    idx = sorted((i for i, p in enumerate(ps) if p == p), key=lambda i: ps[i])
    m = len(idx)
    out = [math.nan] * len(ps)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * ps[i]))  # monotone: never below an earlier one
        out[i] = running
    return out


def nll_per_example(prob_pos, labels, eps: float = 1e-7):
    """Per-example cross-entropy of binary predictions: -log p(label), p clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(prob_pos, dtype=float), eps, 1 - eps)
    y = np.asarray(labels).astype(int)
    return -np.log(np.where(y == 1, p, 1 - p))


def expected_max(values, n_max: int | None = None) -> list[float]:
    """Expected best of n configs drawn with replacement from the observed scores, n = 1..n_max
    (Dodge et al. 2019, "Show Your Work", arXiv 1909.03004):
    E[max of n] = sum_i v(i) * ((i/N)^n - ((i-1)/N)^n), v sorted ascending."""
    v = np.sort(np.asarray([float(x) for x in values if x == x]))
    N = len(v)
    if not N:
        return []
    i = np.arange(1, N + 1)
    return [float((v * ((i / N) ** n - ((i - 1) / N) ** n)).sum()) for n in range(1, (n_max or N) + 1)]


def collapse_info(history, majority_rate: float = 0.5, margin: float = 0.02,
                  acc_key: str = "val_acc", loss_keys=("train_loss", "val_loss")):
    """Did a trial collapse to guessing? -> (collapsed, epoch or None, kind).

    ``history`` is one trial's per-epoch rows (a DataFrame or a list of dicts with ``epoch``,
    ``val_acc`` and the losses). A trial collapsed at epoch ``e`` when
      - a loss is non-finite (nan / inf) at epoch ``e`` (the first such epoch), or
      - its val accuracy stays within ``margin`` of ``majority_rate`` (what predicting one class
        scores) from epoch ``e`` through its last epoch; ``e`` is the first epoch of that final run.
    kind: 'non_finite' (a loss became nan/inf), 'never_learned' (in the chance band from epoch 1
    through the last epoch), 'collapsed' (left the band, then fell back into it for good) or ''."""
    rows = history.to_dict("records") if hasattr(history, "to_dict") else list(history)
    rows = [r for r in rows if r.get("epoch") is not None and r.get("epoch") == r.get("epoch")]
    rows.sort(key=lambda r: r["epoch"])
    if not rows:
        return False, None, ""

    def finite(v):
        try:
            return v is None or math.isfinite(float(v))
        except (TypeError, ValueError):
            return True

    for r in rows:
        if not all(finite(r.get(k)) for k in loss_keys if k in r):
            return True, int(r["epoch"]), "non_finite"
    start = None
    for r in reversed(rows):
        acc = r.get(acc_key)
        if acc is None or acc != acc or abs(float(acc) - majority_rate) > margin:
            break
        start = r
    if start is None:
        return False, None, ""
    epoch = int(start["epoch"])
    kind = "never_learned" if start is rows[0] else "collapsed"
    return True, epoch, kind


def interp_at(xs, ys, x: float, log: bool = False) -> float:
    """``ys`` interpolated at ``x`` on the curve through (xs, ys) (linear, or linear in log x);
    nan outside [min xs, max xs]: no extrapolation."""
    pts = sorted((float(a), float(b)) for a, b in zip(xs, ys) if a == a and b == b)
    if not pts or x < pts[0][0] or x > pts[-1][0]:
        return math.nan
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            if x1 == x0:
                return y1
            if log and x0 > 0:
                t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            else:
                t = (x - x0) / (x1 - x0)
            return y0 + t * (y1 - y0)
    return pts[-1][1]


def diff_interval(k1: float, n1: int, k2: float, n2: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """Difference p1 - p2 of two proportions with Newcombe's hybrid score interval (built from the
    two Wilson intervals; Newcombe 1998, method 10) -> (difference, lo, hi). The difference is
    beyond sampling noise when the interval excludes 0. For two models scored on the same examples
    it is conservative (it ignores their positive correlation)."""
    if not n1 or not n2 or k1 != k1 or k2 != k2:
        return math.nan, math.nan, math.nan
    p1, p2 = round(float(k1)) / n1, round(float(k2)) / n2
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
