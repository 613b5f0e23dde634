"""LR and beta2 scaling with the effective batch (tune_study.lr_scaling): the formulas against hand-
computed values, the study's base batch, what AdamW is actually given, what the tables record, and
that an unscaled run trains exactly as before. No Ray."""
from __future__ import annotations

import inspect
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import tune_study.training.loop as training
from tune_study.config import load_space, resolve_config, validate_study
from tune_study.errors import StudyError
from tune_study.grid import grid_param_space
from tune_study.lr_scaling import ADAM_BETAS, adamw_settings, scaled_beta2, scaled_lr, with_base_batch
from tune_study.search import search_param_space
from tune_study.study_sections import Repeat
from tune_study.training.checkpoints import load_state
from tune_study.tuning import results
from tune_study.tuning.runner import repeat_points

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"samples_per_s", "epoch_train_s", "eval_s", "train_time_s", "evals", "device"}


def _study(tmp_path, body, kind="grid"):
    f = tmp_path / "s.yaml"
    f.write_text(body)
    return load_space(f, kind=kind)


def _split(n: int, seed: int, max_len: int = 16) -> dict:
    """A tokenized split as load_tokenized returns it: random token ids, balanced labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 29000, (n, max_len), generator=g)
    ids[:, 0] = 101
    return {"input_ids": ids.to(torch.int32), "attention_mask": torch.ones(n, max_len, dtype=torch.int8),
            "labels": (torch.arange(n) % 2)[torch.randperm(n, generator=g)]}


def _tiny(**kw):
    """tiny-bert on 20 random reviews: batch 8 -> 3 optimizer steps an epoch."""
    cfg = dict(model="tiny-bert", batch_size=8, micro_batch_size=4, lr=1e-3, epochs=1, max_len=16,
               scheduler="constant", seed=0, device="cpu", eval_batch_size=16, threads=1)
    return {**cfg, **kw}, {"train": _split(20, 1), "val": _split(8, 2), "test": _split(8, 3)}


# ----------------------------------------------------------------------------- the formulas

@pytest.mark.parametrize("rule, batch, base, expected", [
    # the seed's grid under the square-root rule: 5e-5 at 16 -> 1e-4 at 64, 2e-4 at 256, 4e-4 at 1024
    ("sqrt", 16, 16, 5e-5), ("sqrt", 64, 16, 1e-4), ("sqrt", 256, 16, 2e-4), ("sqrt", 1024, 16, 4e-4),
    ("sqrt", 128, 8, 2e-4),                     # lr_scaling.yaml's large batch: 16x the base, 4x the lr
    ("sqrt", 4, 16, 2.5e-5),                    # below the base the lr shrinks: sqrt(1/4) = 1/2
    ("linear", 64, 16, 2e-4), ("linear", 1024, 16, 3.2e-3), ("linear", 8, 16, 2.5e-5),
    ("none", 1024, 16, 5e-5), ("none", 1024, None, 5e-5),
])
def test_scaled_lr_hand_values(rule, batch, base, expected):
    assert scaled_lr(5e-5, batch, base, rule) == pytest.approx(expected, rel=1e-12)


def test_scaled_lr_at_the_base_batch_is_the_lr_to_the_bit():
    for lr in (5e-5, 3e-4, 1e-3, 0.1 + 0.2):
        assert scaled_lr(lr, 16, 16, "sqrt") == lr and scaled_lr(lr, 16, 16, "linear") == lr


@pytest.mark.parametrize("batch, expected", [
    (16, 0.999), (32, 0.998001), (64, 0.996005996001),    # 0.999^1, ^2, ^4 by hand
    (8, math.sqrt(0.999)),                                 # half the base: beta2^(1/2)
])
def test_scaled_beta2_hand_values(batch, expected):
    assert scaled_beta2(0.999, batch, 16, "halflife") == pytest.approx(expected, rel=1e-12)
    assert scaled_beta2(0.999, batch, 16, "none") == 0.999


def test_beta2_half_life_stays_the_same_number_of_examples():
    """The EMA's half-life is ln(1/2)/ln(beta2) steps, i.e. that many times B examples. beta2^kappa
    keeps it fixed over a 128x batch range; the 1 - kappa(1 - beta2) form (negative control) does not,
    and it leaves (0, 1) past kappa = 1000."""
    def half_life_examples(beta2, batch):
        return batch * math.log(0.5) / math.log(beta2)

    base = half_life_examples(0.999, 16)                   # 692.8 steps of 16: 11,084.8 examples
    assert base == pytest.approx(11084.8, abs=0.05)
    for batch in (8, 64, 256, 1024):
        assert half_life_examples(scaled_beta2(0.999, batch, 16, "halflife"), batch) == pytest.approx(base, rel=1e-9)
    kappa = 1024 / 16
    linear_form = 1 - kappa * (1 - 0.999)
    assert half_life_examples(linear_form, 1024) / base - 1 == pytest.approx(-0.0319, abs=5e-4)  # 3% short
    assert 1 - 2000 * (1 - 0.999) < 0 < scaled_beta2(0.999, 2000 * 16, 16, "halflife") < 1


def test_adamw_betas_are_torchs_defaults():
    """An unscaled run passes AdamW the betas it used when it passed none."""
    assert inspect.signature(torch.optim.AdamW).parameters["betas"].default == ADAM_BETAS
    c = resolve_config({"model": "tiny-bert", "batch_size": 64, "lr": 3e-4})
    assert adamw_settings(c) == (3e-4, ADAM_BETAS)


# ----------------------------------------------------------------------------- the study's base batch

GRID = "axes:\n  model: [tiny-bert]\n  batch_size: [32, 8, 128]\n"


@pytest.mark.parametrize("body, kind, base", [
    (GRID + "fixed: {lr_scaling: sqrt}\n", "grid", 8),                     # the smallest of the axis
    (GRID + "  lr_scaling: [none, sqrt]\n", "grid", 8),                    # lr_scaling as an axis
    (GRID + "fixed: {beta2_scaling: halflife}\n", "grid", 8),              # beta2 alone needs it too
    (GRID + "fixed: {lr_scaling: linear, lr_base_batch: 32}\n", "grid", 32),   # named: kept
    ("axes:\n  lr_scaling: [none, sqrt]\nfixed: {model: tiny-bert, batch_size: 24}\n", "grid", 24),
    ("axes:\n  lr_scaling: [none, sqrt]\nfixed: {model: tiny-bert}\n", "grid", 16),   # the default batch
    ("axes:\n  batch_size: {int: [12, 256]}\nfixed: {model: tiny-bert, lr_scaling: sqrt}\n", "search", 12),
    ("axes:\n  batch_size: {choice: [64, 16]}\n  lr_scaling: {choice: [none, sqrt]}\n"
     "fixed: {model: tiny-bert}\n", "search", 16),
])
def test_base_batch_defaults_to_the_smallest_batch_of_the_study(tmp_path, body, kind, base):
    study = _study(tmp_path, body, kind)
    assert study.fixed["lr_base_batch"] == base
    # every trial's config carries it: the grid's and the search's param spaces, and the repeats
    space = (grid_param_space if kind == "grid" else search_param_space)(study)
    assert space["lr_base_batch"] == base
    ran = SimpleNamespace(config={**study.fixed, "batch_size": 128, "seed": 0}, error=None,
                          metrics={"best_val_acc": 0.9, "best_val_loss": 0.3})
    assert [p["lr_base_batch"] for p in repeat_points([ran], Repeat(top=1, seeds=[1, 2]))] == [base, base]


def test_an_unscaled_study_is_left_as_written(tmp_path):
    plain = _study(tmp_path, GRID + "fixed: {lr: 1.0e-3}\n")
    assert "lr_base_batch" not in plain.fixed
    none_axis = _study(tmp_path, GRID + "  lr_scaling: [none]\nfixed: {lr: 1.0e-3}\n")
    assert "lr_base_batch" not in none_axis.fixed
    fixed = {"lr": 1e-3}
    assert with_base_batch({"batch_size": [8]}, fixed, 16) is fixed


def test_one_batch_only_warns_that_nothing_is_scaled(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="tune_study.lr_scaling"):
        study = _study(tmp_path, "axes:\n  lr_scaling: [none, sqrt]\nfixed: {model: tiny-bert, batch_size: 8}\n")
    assert study.fixed["lr_base_batch"] == 8
    assert any("nothing is scaled" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="tune_study.lr_scaling"):
        _study(tmp_path, GRID + "  lr_scaling: [none, sqrt]\n")
    assert not caplog.records


def test_shipped_lr_scaling_study():
    study = load_space(ROOT / "search_spaces" / "lr_scaling.yaml")
    assert study.axes == {"batch_size": [8, 128], "lr_scaling": ["none", "sqrt"]}
    assert study.early_stopping is None and study.fixed["lr_base_batch"] == 8
    peaks = {(b, r): adamw_settings(resolve_config({**study.fixed, "batch_size": b, "lr_scaling": r}))[0]
             for b in (8, 128) for r in ("none", "sqrt")}
    assert peaks == pytest.approx({(8, "none"): 5e-5, (8, "sqrt"): 5e-5, (128, "none"): 5e-5, (128, "sqrt"): 2e-4},
                                  rel=1e-12)


# ----------------------------------------------------------------------------- bad values: one line

@pytest.mark.parametrize("config, msg", [
    ({"lr_scaling": "cubic"}, "lr_scaling: expected one of none, sqrt, linear, got 'cubic'"),
    ({"lr_scaling": True}, "lr_scaling: expected one of none, sqrt, linear, got True"),
    ({"beta2_scaling": "linear"}, "beta2_scaling: expected one of none, halflife, got 'linear'"),
    ({"lr_base_batch": 0}, "lr_base_batch: expected an integer > 0 or null, got 0"),
    ({"lr_base_batch": 8.0}, "lr_base_batch: expected an integer > 0 or null, got 8.0"),
    ({"lr_base_batch": "16"}, "lr_base_batch: expected an integer > 0 or null, got '16'"),
    ({"lr_scaling": "sqrt"}, "lr_base_batch: lr_scaling sqrt scales from a base batch: give lr_base_batch "
                             "(a study sets its smallest batch_size)"),
    ({"beta2_scaling": "halflife"}, "lr_base_batch: beta2_scaling halflife scales from a base batch: give "
                                    "lr_base_batch (a study sets its smallest batch_size)"),
])
def test_bad_config_values(config, msg):
    with pytest.raises(StudyError) as e:
        resolve_config(config)
    assert str(e.value) == msg


@pytest.mark.parametrize("body, key, msg", [
    (GRID + "  lr_scaling: [none, cubic]\n", "axes.lr_scaling", "expected one of none, sqrt, linear, got 'cubic'"),
    (GRID + "fixed: {lr_scaling: sqrt, lr_base_batch: 0}\n", "fixed.lr_base_batch",
     "expected an integer > 0 or null, got 0"),
    (GRID + "fixed: {beta2_scaling: sqrt}\n", "fixed.beta2_scaling", "expected one of none, halflife, got 'sqrt'"),
    (GRID + "  lr_base_batch: [8, 8.5]\nfixed: {lr_scaling: sqrt}\n", "axes.lr_base_batch",
     "expected an integer > 0 or null, got 8.5"),
])
def test_bad_study_values_are_keyed(tmp_path, body, key, msg):
    with pytest.raises(StudyError) as e:
        _study(tmp_path, body)
    assert str(e.value) == f"{tmp_path / 's.yaml'}: key '{key}': {msg}" and e.value.key == key


# ----------------------------------------------------------------------------- what AdamW gets

def _spy_adamw(monkeypatch):
    """AdamW that records (lr, betas) of its group at every step."""
    seen = []

    class SpyAdamW(torch.optim.AdamW):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.register_step_pre_hook(lambda opt, args, kwargs: seen.append(
                (opt.param_groups[0]["lr"], tuple(opt.param_groups[0]["betas"]))))

    monkeypatch.setattr(torch.optim, "AdamW", SpyAdamW)
    return seen


def test_optimizer_gets_the_scaled_lr_and_beta2(monkeypatch):
    """batch 8 from base 2: kappa 4, so sqrt doubles lr 1e-3 and beta2 becomes 0.999^4; the reported
    lr_peak / beta2 are what the optimizer held at every step, and feed trials.csv and history."""
    seen = _spy_adamw(monkeypatch)
    cfg, data = _tiny(lr_scaling="sqrt", lr_base_batch=2, beta2_scaling="halflife", epochs=2)
    history = training.train(cfg, data=data)
    assert len(seen) == 6 and set(seen) == {(2e-3, (0.9, 0.999 ** 4))}   # 2 epochs of 3 steps
    assert 0.999 ** 4 == pytest.approx(0.996005996001, rel=1e-12)
    for h in history:
        assert (h["lr_peak"], h["lr"], h["beta2"]) == (2e-3, 2e-3, 0.999 ** 4)   # constant schedule

    # a linear schedule decays from the scaled peak, which lr_peak keeps
    seen.clear()
    cfg, data = _tiny(lr_scaling="linear", lr_base_batch=4, scheduler="linear", epochs=2)
    history = training.train(cfg, data=data)
    assert [lr for lr, _ in seen] == pytest.approx([2e-3 * (6 - k) / 6 for k in range(6)], rel=1e-12)
    assert [h["lr_peak"] for h in history] == [2e-3, 2e-3] and history[-1]["lr"] == pytest.approx(0, abs=1e-15)
    assert {b for _, b in seen} == {(0.9, 0.999)}

    # the tables: trials.csv shows the lr each trial used, history carries it on epoch-end rows
    study = validate_study({"name": "s", "axes": {"lr_scaling": ["none", "linear"]},
                            "fixed": {"model": "tiny-bert", "epochs": 2, "lr_base_batch": 4}}, "grid")
    run = SimpleNamespace(config={**cfg, "lr_base_batch": 4}, metrics={**history[-1], "trial_id": "t1"},
                          metrics_dataframe=pd.DataFrame(history), checkpoint=None, error=None, path="/x/t1")
    trials, hist, _ = results.build_frames([run], study)
    assert trials.loc[0, "lr_peak"] == 2e-3 and trials.loc[0, "beta2"] == 0.999
    assert trials.loc[0, "lr_scaling"] == "linear" and trials.loc[0, "lr_base_batch"] == 4
    assert hist.loc[hist.epoch_end, "lr_peak"].tolist() == [2e-3, 2e-3]


def _run(cfg, data):
    weights = {}
    history = training.train(cfg, data=data, report=lambda m, d: weights.__setitem__(m["epoch"], load_state(d)["model"]))
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history], weights


def test_unscaled_training_is_bit_identical():
    """lr_scaling none (with or without a base batch), and any rule at its own base batch, train the
    same weights and numbers as a config without the keys; sqrt from another base does not (control)."""
    cfg, data = _tiny(epochs=2)
    ref_hist, ref_w = _run(cfg, data)
    for extra in ({"lr_scaling": "none"}, {"lr_scaling": "none", "lr_base_batch": 2},
                  {"lr_scaling": "sqrt", "lr_base_batch": 8}, {"lr_scaling": "linear", "lr_base_batch": 8}):
        hist, w = _run({**cfg, **extra}, data)
        assert hist == ref_hist, extra
        assert all(torch.equal(w[e][k], ref_w[e][k]) for e in ref_w for k in ref_w[e]), extra
    hist, w = _run({**cfg, "lr_scaling": "sqrt", "lr_base_batch": 2}, data)
    assert hist[-1]["lr_peak"] == 2 * ref_hist[-1]["lr_peak"]
    assert not torch.equal(w[2]["classifier.weight"], ref_w[2]["classifier.weight"])
    assert hist[-1]["train_loss"] != ref_hist[-1]["train_loss"]
