"""tune_study.training.noise_scale: the gradient noise scale from the accumulation windows, against the exact
|G|² and tr(Σ) of a logistic regression whose per-example gradients are computed in closed form, with
negative controls; and the training loop with the measurement on (unchanged training) or off."""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import tune_study.models as models
import tune_study.training.loop as training
import tune_study.training.memory as memory
from tune_study.training.loop import train
from tune_study.training.noise_scale import NoiseScale, b_simple, halves, interval_row, window_estimate
from tune_study.training.step import accumulate_gradients

sys.path.insert(0, str(Path(__file__).parent))
from test_training import synth_data, tiny_cfg  # noqa: E402

N, D = 64, 4            # the fixed dataset: 64 examples, 4 features
WINDOWS = 3000          # windows averaged per sampling scheme (standard error of the mean |G|² ~1.7%)
TOL = 0.10


# ----------------------------------------------------------------------------- the exact case

class Logistic(torch.nn.Module):
    """Softmax regression over 2 classes, float64; called as the training loop calls a model."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(D, 2, dtype=torch.float64)
        with torch.no_grad():  # fixed weights away from the optimum: |G|² is well above 0
            self.linear.weight.copy_(torch.tensor([[0.2, 0.1, -0.3, 0.4], [-0.1, 0.3, 0.2, -0.2]]))
            self.linear.bias.zero_()

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.linear(input_ids))


def dataset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=torch.float64) + 0.3
    y = (torch.rand(N, generator=g, dtype=torch.float64) < torch.sigmoid(x @ torch.tensor(
        [1.5, -1.0, 0.5, 0.0], dtype=torch.float64))).long()
    return x, y


def per_example_grads(model, x, y) -> torch.Tensor:
    """Closed form, no autograd: d CE / d logits = softmax - onehot; d/dW = that ⊗ x, d/db = that."""
    w, b = model.linear.weight.detach(), model.linear.bias.detach()
    r = torch.softmax(x @ w.T + b, -1) - F.one_hot(y, 2).double()
    return torch.cat([(r[:, :, None] * x[:, None, :]).reshape(len(x), -1), r], 1)


def exact(model, x, y) -> tuple[float, float]:
    """|G|² of the dataset's mean gradient and tr(Σ) of the per-example gradients (divisor N)."""
    per = per_example_grads(model, x, y)
    g = per.mean(0)
    return float(g @ g), float(((per - g) ** 2).sum(1).mean())


def run_windows(sizes: list[int], windows: int, replace: bool, seed: int = 1) -> dict:
    """``windows`` windows through accumulate_gradients with the meter on. Windows of n = sum(sizes)
    examples: drawn uniformly with replacement, or (replace=False) consecutive slices of a fresh
    permutation of the dataset, as the training loop draws them. Returns the meter's read() and each
    window's raw norms."""
    x, y = dataset()
    model = Logistic()
    noise = NoiseScale(model.parameters(), torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    n, raw, perm, pos = sum(sizes), [], None, N
    for _ in range(windows):
        if replace:
            idx = torch.randint(N, (n,), generator=g)
        else:
            if pos + n > N:
                perm, pos = torch.randperm(N, generator=g), 0
            idx, pos = perm[pos:pos + n], pos + n
        micro = [{"input_ids": x[j], "attention_mask": None, "labels": y[j]} for j in torch.split(idx, sizes)]
        model.zero_grad(set_to_none=True)
        accumulate_gradients(model, micro, None, noise)
        raw.append({**noise.last, "micro_sq": [float(s) for s in noise.last["micro_sq"]],
                    "window_sq": float(noise.last["window_sq"])})
    q, s = exact(model, x, y)
    return {"read": noise.read(), "raw": raw, "Q": q, "S": s}


@pytest.fixture(scope="module")
def runs():
    return {"equal": run_windows([4, 4, 4, 4], WINDOWS, True),
            "unequal": run_windows([9, 4, 2, 1], WINDOWS, True),
            "permuted": run_windows([4, 4, 4, 4], WINDOWS, False)}


def _mean_estimates(raw, estimate) -> tuple[float, float]:
    est = torch.tensor([[float(v) for v in estimate(r)] for r in raw], dtype=torch.float64)
    return float(est[:, 0].mean()), float(est[:, 1].mean())


def _rel(a: float, b: float) -> float:
    return abs(a / b - 1)


def test_hooks_read_each_micro_batch_and_the_window_exactly():
    """The meter's |g_i|² (each micro-batch's mean-loss gradient) and |G_n|² equal the closed form."""
    x, y = dataset()
    model = Logistic()
    noise = NoiseScale(model.parameters(), torch.device("cpu"))
    idx = torch.tensor([3, 17, 17, 40, 5, 62, 8, 0, 33, 21])
    sizes = [6, 3, 1]
    micro = [{"input_ids": x[j], "attention_mask": None, "labels": y[j]} for j in torch.split(idx, sizes)]
    accumulate_gradients(model, micro, None, noise)
    per = per_example_grads(model, x, y)
    for sq, j in zip(noise.last["micro_sq"], torch.split(idx, sizes)):
        g = per[j].mean(0)
        assert float(sq) == pytest.approx(float(g @ g), rel=1e-12)
    g = per[idx].mean(0)
    assert float(noise.last["window_sq"]) == pytest.approx(float(g @ g), rel=1e-12)
    assert noise.last["sizes"] == sizes
    # the hooks did not change the gradient: .grad is the window's mean gradient
    flat = torch.cat([model.linear.weight.grad.reshape(-1), model.linear.bias.grad])
    assert torch.allclose(flat, g, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("scheme", ["equal", "unequal"])
def test_average_over_windows_matches_exact_g2_and_trace(runs, scheme):
    """Windows of 16 examples drawn with replacement (the estimator's sampling model), as 4 + 4 + 4 + 4
    or 9 + 4 + 2 + 1 micro-batches: the mean over 3000 windows is within 10% of the exact |G|² and
    tr(Σ) (Σ with divisor N), and B_simple from the sums within 10% of tr(Σ)/|G|²."""
    r = runs[scheme]
    got, q, s = r["read"], r["Q"], r["S"]
    assert got["gns_windows"] == WINDOWS
    assert 5 < s / q < 30  # a case where neither term is negligible at these batch sizes
    assert _rel(got["gns_g2"], q) <= TOL, (got, q)
    assert _rel(got["gns_trace"], s) <= TOL, (got, s)
    assert _rel(got["gns_b_simple"], s / q) <= TOL


def test_without_replacement_estimates_the_finite_population_terms(runs):
    """Windows as the loop draws them (slices of a permutation): the estimates are of S' = N/(N-1) tr(Σ)
    and |G|² - S'/N (noise_scale's docstring), each within 10%; here S'/N is 18% of |G|², so the same
    check against |G|² itself fails: the sampling model matters and the test can tell."""
    r = runs["permuted"]
    got, q, s = r["read"], r["Q"], r["S"]
    s_prime = s * N / (N - 1)
    assert _rel(got["gns_g2"], q - s_prime / N) <= TOL
    assert _rel(got["gns_trace"], s_prime) <= TOL
    assert _rel(got["gns_g2"], q) > TOL


def test_negative_control_missing_rescale_fails(runs):
    """The hooks see loss_sum_i / n, not the micro-batch mean: without the (n/b_i)² rescale (nanoGNS's
    mean_loss_scale) the same 10% check fails."""
    for scheme in ("equal", "unequal"):
        r = runs[scheme]

        def unscaled(w):
            n = sum(w["sizes"])
            return window_estimate([sq * (b / n) ** 2 for sq, b in zip(w["micro_sq"], w["sizes"])], w["sizes"],
                                   w["window_sq"])

        g2, trace = _mean_estimates(r["raw"], unscaled)
        assert _rel(g2, r["Q"]) > TOL and _rel(trace, r["S"]) > TOL
        # and the same per-window data with the rescale pass: the failure is the missing rescale's
        g2, trace = _mean_estimates(r["raw"], lambda w: window_estimate(w["micro_sq"], w["sizes"], w["window_sq"]))
        assert _rel(g2, r["Q"]) <= TOL and _rel(trace, r["S"]) <= TOL


def test_negative_control_unequal_sizes_taken_as_equal_fails(runs):
    """9 + 4 + 2 + 1 treated as four micro-batches of n/k = 4 (the plain mean of the |g_i|²): biased."""
    r = runs["unequal"]
    g2, trace = _mean_estimates(r["raw"], lambda w: window_estimate(
        w["micro_sq"], [sum(w["sizes"]) / len(w["sizes"])] * len(w["sizes"]), w["window_sq"]))
    assert _rel(g2, r["Q"]) > TOL and _rel(trace, r["S"]) > TOL


def test_last_micro_batch_only_is_unbiased_but_noisier(runs):
    """gpt-neox's form (only the last micro-batch as G_small, B_small = its size) is unbiased too, so it
    is no negative control for bias; per window it is noisier than the mean over all micro-batches."""
    raw = runs["equal"]["raw"]

    def last_only(w):
        n, b = sum(w["sizes"]), w["sizes"][-1]
        return ((n * w["window_sq"] - b * w["micro_sq"][-1]) / (n - b),   # App. A.1 with B_small = b, B_big = n
                (w["micro_sq"][-1] - w["window_sq"]) / (1 / b - 1 / n))

    ours = torch.tensor([[float(v) for v in window_estimate(w["micro_sq"], w["sizes"], w["window_sq"])] for w in raw])
    last = torch.tensor([list(last_only(w)) for w in raw])
    assert _rel(float(last[:, 0].mean()), runs["equal"]["Q"]) <= TOL and _rel(float(last[:, 1].mean()),
                                                                            runs["equal"]["S"]) <= TOL
    ratio = last.std(0) / ours.std(0)   # measured 1.39 (|G|²) and 2.86 (tr(Σ)) over these 3000 windows
    assert ratio[0] > 1.2 and ratio[1] > 2.0


def test_undefined_where_the_sums_say_nothing():
    assert math.isnan(b_simple(0.0, 1.0)) and math.isnan(b_simple(-0.1, 1.0)) and math.isnan(b_simple(0.2, -0.1))
    assert b_simple(0.5, 2.0) == 4.0
    row = interval_row(0.0, 0.0, 0)
    assert row["gns_windows"] == 0 and all(math.isnan(row[k]) for k in ("gns_g2", "gns_trace", "gns_b_simple"))
    assert math.isnan(interval_row(-1.0, 4.0, 2)["gns_b_simple"]) and interval_row(-1.0, 4.0, 2)["gns_g2"] == -0.5
    with pytest.raises(ValueError):
        window_estimate([1.0], [8], 1.0)
    model = Logistic()
    noise = NoiseScale(model.parameters(), torch.device("cpu"))
    x, y = dataset()
    accumulate_gradients(model, [{"input_ids": x[:8], "attention_mask": None, "labels": y[:8]}], None, noise)
    assert noise.read()["gns_windows"] == 0 and math.isnan(noise.epoch_b_simple())  # k = 1: no estimate
    with pytest.raises(RuntimeError, match="must be empty"):  # .grad holds the last window's gradient
        accumulate_gradients(model, [{"input_ids": x[:8], "attention_mask": None, "labels": y[:8]}], None, noise)


def test_halves():
    assert halves(8, 8, True) == 4 and halves(5, 8, True) == 3 and halves(16, 8, True) == 8
    assert halves(8, 8, False) == 8 and halves(1, 8, True) == 8


# ----------------------------------------------------------------------------- in the training loop

def _trained(cfg, data, monkeypatch=None):
    """train(); the final weights, per-epoch reports, and the micro-batch sizes of every window."""
    weights, sizes = {}, []
    real = memory.accumulate_gradients

    def spy(model, micro, autocast=None, noise=None):
        sizes.append([len(mb["labels"]) for mb in micro])
        return real(model, micro, autocast, noise)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(memory, "accumulate_gradients", spy)
        hist = train(cfg, data=data, report=lambda m, d: weights.update(training.load_state(d)["model"]))
    return weights, hist, sizes


def _evals(hist):
    return [r for h in hist for r in json.loads(h["evals"])]


def test_measurement_leaves_training_bitwise_unchanged():
    """k >= 2 (micro-batches 3 + 3 + 2 and 3 + 2, dropout on): the hooks only read, so the weights and
    every reported loss are identical to a run without the measurement; with it off, no estimate."""
    data = synth_data(37)
    cfg = tiny_cfg(epochs=2, evals_per_epoch=2)
    w_on, on, sizes = _trained(cfg, data)
    w_off, off, _ = _trained({**cfg, "noise_scale": False}, data)
    assert all(torch.equal(w_on[k], w_off[k]) for k in w_on)
    for a, b in zip(_evals(on), _evals(off)):
        assert (a["train_loss"], a["val_loss"], a["val_acc"]) == (b["train_loss"], b["val_loss"], b["val_acc"])
        assert b["gns_windows"] == 0 and math.isnan(b["gns_b_simple"]) and math.isnan(b["gns_g2"])
    assert sizes[:5] == [[3, 3, 2]] * 4 + [[3, 2]]
    # 5 steps an epoch, evaluations after steps 2 and 5: 2 and 3 windows measured
    assert [r["gns_windows"] for r in _evals(on)] == [2, 3, 2, 3]
    assert all(math.isfinite(r["gns_g2"]) and math.isfinite(r["gns_trace"]) for r in _evals(on))
    for h in on:  # the epoch's B_simple is that of the sums over its evaluations
        ev = json.loads(h["evals"])
        g2, tr = (sum(r[k] * r["gns_windows"] for r in ev) for k in ("gns_g2", "gns_trace"))
        assert same_float(h["gns_b_simple_epoch"], b_simple(g2, tr))
    assert same_float(on[1]["gns_b_simple_first_epoch"], on[0]["gns_b_simple_epoch"])
    assert same_float(on[0]["gns_b_simple_first_epoch"], on[0]["gns_b_simple_epoch"])


def same_float(a, b) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12)


def _no_dropout64(monkeypatch):
    real = models.load_model

    def load(name, *a, **kw):
        model = real(name, *a, **kw).double()
        for mod in model.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0  # BERT's attention reads its dropout's p too
        return model

    monkeypatch.setattr(models, "load_model", load)


def test_one_micro_batch_windows_split_in_halves_train_the_same(monkeypatch):
    """Batch 8 at micro-batch 8 (k = 1): measured, each window runs as 4 + 4 (the last, of 5, as 3 + 2)
    and gives an estimate; in float64 without dropout the weights and losses after 10 steps equal the
    unsplit run's to float rounding. With dropout the halves draw other masks: training differs."""
    data = synth_data(37)
    cfg = tiny_cfg(epochs=2, micro_batch_size=8)
    _no_dropout64(monkeypatch)
    w_on, on, sizes_on = _trained(cfg, data)
    w_off, off, sizes_off = _trained({**cfg, "noise_scale": False}, data)
    assert sizes_on == ([[4, 4]] * 4 + [[3, 2]]) * 2 and sizes_off == ([[8]] * 4 + [[5]]) * 2
    assert w_on["classifier.weight"].dtype == torch.float64
    for k in w_on:
        assert float((w_on[k] - w_off[k]).norm()) <= 1e-10 * max(float(w_off[k].norm()), 1.0), k
    assert not all(torch.equal(w_on[k], w_off[k]) for k in w_on)  # really another summation order
    for a, b in zip(on, off):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-12)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-12)
        assert a["accumulation_steps"] == b["accumulation_steps"] == 1
    assert [h["gns_windows"] for h in on] == [5, 5] and [h["gns_windows"] for h in off] == [0, 0]
    monkeypatch.undo()  # the tiny-bert of a trial: fp32, dropout 0.1
    w_on, _, _ = _trained(cfg, data)
    w_off, _, _ = _trained({**cfg, "noise_scale": False}, data)
    assert max(float((w_on[k] - w_off[k]).norm() / (w_off[k].norm() + 1e-12)) for k in w_on) > 1e-4


def test_first_epoch_value_survives_resume(tmp_path):
    """Epoch 2's report carries epoch 1's B_simple, also when epoch 2 runs after a resume."""
    data = synth_data(37)
    cfg = tiny_cfg(epochs=2, seed=1)  # a seed whose epochs give a defined B_simple (|G|² sums > 0)
    saved = {}

    def keep(m, d):
        if m["epoch"] == 1:
            shutil.copytree(d, tmp_path / "ckpt")
        saved[m["epoch"]] = m

    train(cfg, data=data, report=keep)
    resumed = train(cfg, data=data, resume_from=tmp_path / "ckpt")
    assert math.isfinite(saved[1]["gns_b_simple_epoch"]) and math.isfinite(saved[2]["gns_b_simple_epoch"])
    assert saved[1]["gns_b_simple_epoch"] != saved[2]["gns_b_simple_epoch"]
    assert saved[2]["gns_b_simple_first_epoch"] == saved[1]["gns_b_simple_epoch"]
    assert resumed[-1]["gns_b_simple_first_epoch"] == saved[1]["gns_b_simple_epoch"]
    assert resumed[-1]["gns_b_simple_epoch"] == saved[2]["gns_b_simple_epoch"]
