"""The gradient noise scale B_simple = tr(Σ)/|G|², measured inside the accumulation windows.

McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch Training" (arXiv
1812.06162), Appendix A.1: with G the true gradient and Σ the per-example gradient covariance, the
mean gradient of b examples drawn independently has E|g_b|² = |G|² + tr(Σ)/b. Two batch sizes give
unbiased estimates of |G|² and tr(Σ); here the small batches are a window's micro-batches and the
big one the window (``window_estimate``). Their sums between two evaluations are divided only at
the end (single windows are very noisy; their ratio would not be unbiased).

How the norms are read without a copy of ``.grad`` and without a host sync: a tensor hook on each
parameter (``p.register_hook``, as petuum/adaptdl's ``GradientNoiseScale._backward_hook`` does) sees
the gradient that *this* backward adds to ``.grad``: one micro-batch's contribution c_i. A
micro-batch's backward is of loss_sum_i / n (n = the window's size), so its mean-loss gradient is
g_i = (n / b_i) c_i and |g_i|² = (n / b_i)² |c_i|² (CerebrasResearch/nanoGNS ``gns_utils.py``,
``mean_loss_scale``). The norms stay 0-d tensors on the device; ``read`` is the only host sync.

Sampling model, and what the estimates estimate. The formulas are exact in expectation when the
examples of a window are independent draws (with replacement) from the training set: then they
estimate |G|² and tr(Σ) of the training set (Σ with divisor N). The loop draws windows *without*
replacement (each epoch is a permutation); then E|g_b|² = |G|² - S'/N + S'/b with S' = N/(N-1) tr(Σ),
so the estimates are of S' (the covariance with divisor N - 1) and of |G|² - S'/N: a bias of
B_simple/N relative on |G|², small for a training set much larger than the noise scale (both cases
are checked against exact values in tests/test_noise_scale.py).

What B_simple is not: it assumes a Hessian proportional to the identity (the fuller B_noise =
tr(HΣ)/GᵀHG, the paper's Eq. 2.8) and tends to overestimate the critical batch; it is defined for
SGD (the loop runs AdamW); it grows as the loss falls, hence one value per evaluation interval.
"""
from __future__ import annotations

import math

import torch


def window_estimate(micro_sq: list, sizes: list[int], window_sq):
    """Unbiased estimates (|G|², tr(Σ)) from one window of k >= 2 micro-batches of sizes b_i (n = Σ b_i).

    ``micro_sq``: each micro-batch's mean-loss gradient's squared norm |g_i|²; ``window_sq``: the
    window gradient's |G_n|². Unequal sizes (an epoch's last window, a remainder micro-batch): the
    small-batch norm is the size-weighted mean s = Σ (b_i/n) |g_i|², whose expectation is
    Σ (b_i/n)(|G|² + tr(Σ)/b_i) = |G|² + k tr(Σ)/n: the two-size formula of App. A.1 with
    B_small = n/k and B_big = n, which reduces to it for equal micro-batches (b = n/k):
        |G|²  = (n |G_n|² - (n/k) s) / (n - n/k)      = (k |G_n|² - s) / (k - 1)
        tr(Σ) = (s - |G_n|²) / (k/n - 1/n)              = n (s - |G_n|²) / (k - 1)
    Works on tensors (no host sync) and on floats."""
    k, n = len(sizes), sum(sizes)
    if k < 2:
        raise ValueError("a window of one micro-batch gives no estimate")
    s = sum(sq * (b / n) for sq, b in zip(micro_sq, sizes))
    return (k * window_sq - s) / (k - 1), n * (s - window_sq) / (k - 1)


def b_simple(g2: float, trace: float) -> float:
    """tr(Σ)/|G|²; NaN where |G|² <= 0 or tr(Σ) <= 0 (noise in the estimates, not a batch size)."""
    return trace / g2 if g2 > 0 and trace > 0 and math.isfinite(g2 + trace) else math.nan


class NoiseScale:
    """Hooks on ``params`` and the running sums of the estimates.

    Per window: ``start_window()``, after each micro-batch's backward ``micro_batch_done(b_i)``, and
    ``end_window()`` once ``.grad`` holds the window's gradient (before clipping). ``read()`` (at an
    evaluation) gives the estimates since the previous read; ``epoch_b_simple()`` that of the epoch's
    reads so far, and starts the next epoch. The hooks only read: training is unchanged."""

    def __init__(self, params, device: torch.device):
        self.params = [p for p in params if p.requires_grad]
        self._active, self._parts, self.last = False, [], None
        self._zero = lambda: torch.zeros((), dtype=torch.float64, device=device)
        self._g2, self._trace, self._windows = self._zero(), self._zero(), 0
        self._epoch = [0.0, 0.0, 0]
        self._handles = [p.register_hook(self._hook) for p in self.params]

    def _hook(self, grad: torch.Tensor) -> None:
        # Called once per parameter and backward with that backward's gradient (summed over uses
        # of the parameter), before it is added to .grad; returns None: the gradient is not changed.
        # Only the norm is kept, not the tensor, so .grad still takes the incoming buffer as is.
        if self._active:
            self._parts.append(torch.linalg.vector_norm(grad.detach()))

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def start_window(self) -> None:
        # The window gradient is read from .grad: it must start empty (the loop sets it to None).
        if any(p.grad is not None for p in self.params):
            raise RuntimeError("noise scale: .grad must be empty (None) when a measured window starts")
        self._active, self._parts, self._micro, self._sizes = True, [], [], []

    def micro_batch_done(self, size: int) -> None:
        # |c_i|², rescaled at the end (no part: no weight got a gradient from this micro-batch)
        self._micro.append(torch.stack(self._parts).double().square().sum() if self._parts else self._zero())
        self._sizes.append(size)
        self._parts = []

    def end_window(self) -> None:
        self._active = False
        if len(self._sizes) < 2:
            return
        n = sum(self._sizes)
        micro_sq = [sq * (n / b) ** 2 for sq, b in zip(self._micro, self._sizes)]   # |g_i|² = (n/b_i)² |c_i|²
        grads = [p.grad for p in self.params if p.grad is not None]
        window_sq = torch.nn.utils.get_total_norm(grads).double().square()
        g2, trace = window_estimate(micro_sq, self._sizes, window_sq)
        self._g2 += g2
        self._trace += trace
        self._windows += 1
        self.last = {"micro_sq": micro_sq, "sizes": list(self._sizes), "window_sq": window_sq}  # for the tests

    def read(self) -> dict:
        """columns.GNS_COLUMNS since the previous read: mean estimates per window (NaN with no window),
        B_simple from the two sums, the number of windows. One host sync."""
        w, g2, trace = self._windows, float(self._g2), float(self._trace)
        self._g2, self._trace, self._windows = self._zero(), self._zero(), 0
        self._epoch = [self._epoch[0] + g2, self._epoch[1] + trace, self._epoch[2] + w]
        return interval_row(g2, trace, w)

    def epoch_b_simple(self) -> float:
        g2, trace, w = self._epoch
        self._epoch = [0.0, 0.0, 0]
        return b_simple(g2, trace) if w else math.nan


def interval_row(g2_sum: float, trace_sum: float, windows: int) -> dict:
    if not windows:
        return {"gns_g2": math.nan, "gns_trace": math.nan, "gns_b_simple": math.nan, "gns_windows": 0}
    return {"gns_g2": g2_sum / windows, "gns_trace": trace_sum / windows, "gns_b_simple": b_simple(g2_sum, trace_sum),
            "gns_windows": windows}


def read(noise: NoiseScale | None) -> dict:
    """``noise.read()``, or the row of a run without the measurement."""
    return noise.read() if noise is not None else interval_row(0.0, 0.0, 0)


def halves(n: int, m: int, measuring: bool) -> int:
    """The micro-batch size to cut a window of ``n`` with. A window that fits in one micro-batch gives
    no estimate; when measuring, it is run as two halves instead. Each micro-batch's loss is summed
    and divided by the window's size, so the halves' gradients add up to the whole window's up to
    float rounding (exact accumulation, tests/test_training.py). With dropout, though, the halves
    draw their masks in another order than the whole would: the same distribution, other draws."""
    return math.ceil(n / 2) if measuring and 2 <= n <= m else m
