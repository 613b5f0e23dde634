"""The GPU-throughput machinery that can be exercised on a CPU: OOM halving keeps the effective
batch and order, GPU-fraction packing, and the benchmark's table."""
from __future__ import annotations

import math
import re

import pandas as pd
import pytest
import torch

import tune_study.config as config
import tune_study.training.checkpoints as checkpoints
import tune_study.training.loop as training
import tune_study.training.memory as memory
from tune_study import bench
from tune_study.study_sections import Resources
from tune_study.tuning import ray_setup


def _data(n=24, L=16):
    g = torch.Generator().manual_seed(0)

    def split(k):
        return {"input_ids": torch.randint(1000, 2000, (k, L), generator=g, dtype=torch.int32),
                "attention_mask": torch.ones(k, L, dtype=torch.int8), "labels": torch.arange(k) % 2}

    return {"train": split(n), "val": split(6), "test": split(6)}


def test_oom_halves_micro_batch_and_keeps_the_update(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNE_STUDY_CACHE", str(tmp_path / "cache"))
    key = memory.probe_key(config.resolve_config({"model": "tiny-bert", "max_len": 16}), torch.device("cpu"), "fp32")
    memory.record_micro_batch(key, 16)    # a probe that thought 16 fits
    memory.record_micro_batch("other|key", 8)
    cfg = {"model": "tiny-bert", "batch_size": 16, "epochs": 2, "max_len": 16, "lr": 1e-3, "seed": 1,
           "precision": "fp32"}
    data = _data()
    reference = training.train({**cfg, "micro_batch_size": 4}, data=data,
                               report=lambda m, d: torch.save(checkpoints.load_state(d)["model"], tmp_path / "ref.pt"))
    real = memory.accumulate_gradients

    def tight_memory(model, micro_batches, autocast=None, noise=None):
        if max(len(mb["labels"]) for mb in micro_batches) > 4:
            # Fail the way a real OOM does: after part of the work, its dropout draws and
            # gradients, which the retry must neither keep nor let shift the RNG.
            real(model, micro_batches[:1], autocast, noise)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, micro_batches, autocast, noise)

    monkeypatch.setattr(memory, "accumulate_gradients", tight_memory)
    halved = training.train({**cfg, "micro_batch_size": 16}, data=data,
                            report=lambda m, d: torch.save(checkpoints.load_state(d)["model"], tmp_path / "oom.pt"))
    assert halved[-1]["micro_batch_size"] == 4 and halved[-1]["oom_halvings"] == 2
    assert halved[-1]["accumulation_steps"] == 4
    assert [h["optimizer_steps"] for h in halved] == [h["optimizer_steps"] for h in reference] == [2, 4]
    a, b = torch.load(tmp_path / "ref.pt", weights_only=True), torch.load(tmp_path / "oom.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same windows, same order, same micro-batches: same weights
    assert [h["train_loss"] for h in halved] == [h["train_loss"] for h in reference]
    # The OOM corrected the probe's cache: the next trial of this kind starts at 4, not 16.
    assert memory.cached_micro_batches() == {key: 4, "other|key": 8}
    memory.record_micro_batch(key, 8)     # a cached value is only ever lowered
    assert memory.cached_micro_batches()[key] == 4


def _oom_above(limit):
    """A forward pre-hook that fails like a CUDA OOM for batches larger than ``limit``."""
    def hook(module, args, kwargs):
        if kwargs["input_ids"].shape[0] > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
    return hook


def test_probe_runs_in_train_mode_and_caches_what_fits(monkeypatch, tmp_path):
    """The probe measures a training step: dropout on (eval mode underestimates activations ~2x)."""
    import tune_study.models as models

    monkeypatch.setenv("TUNE_STUDY_CACHE", str(tmp_path))
    real_load = models.load_model
    seen_modes, loads = [], []

    def spy_load(name):
        model = real_load(name).eval()  # as from_pretrained hands it over
        model.register_forward_pre_hook(lambda mod, args, kwargs: seen_modes.append(mod.training), with_kwargs=True)
        model.register_forward_pre_hook(_oom_above(4), with_kwargs=True)
        loads.append(name)
        return model

    monkeypatch.setattr(models, "load_model", spy_load)
    c = config.resolve_config({"model": "tiny-bert", "batch_size": 64, "max_len": 16})
    assert memory.probe_micro_batch(c, torch.device("cpu"), "fp32") == 4   # 64, 32, 16, 8 fail
    assert seen_modes and all(seen_modes), seen_modes
    assert memory.cached_micro_batches() == {memory.probe_key(c, torch.device("cpu"), "fp32"): 4}
    assert memory.probe_micro_batch(c.model_copy(update={"batch_size": 128}), torch.device("cpu"), "fp32") == 4  # cached
    assert memory.probe_micro_batch(c.model_copy(update={"batch_size": 2}), torch.device("cpu"), "fp32") == 2
    assert loads == ["tiny-bert"]


def test_evaluation_halves_its_batch_on_oom():
    from tune_study.models import load_model

    torch.manual_seed(0)
    model = load_model("tiny-bert")
    split = _data(n=21)["train"]
    plain4 = training.evaluate(model, split, batch_size=4)
    plain16 = training.evaluate(model, split, batch_size=16)
    hook = model.register_forward_pre_hook(_oom_above(4), with_kwargs=True)
    out = training.evaluate(model, split, batch_size=16)   # 16 fails, 8 fails, 4 fits
    assert out["batch_size"] == 4 and model.training
    assert out["loss"] == plain4["loss"] and out["acc"] == plain4["acc"] and torch.equal(out["probs"], plain4["probs"])
    assert out["loss"] == pytest.approx(plain16["loss"], rel=1e-6) and out["acc"] == plain16["acc"]
    hook.remove()
    model.register_forward_pre_hook(_oom_above(0), with_kwargs=True)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        training.evaluate(model, split, batch_size=2)      # not even 1 fits: the OOM is raised
    assert model.training


def test_optimizer_step_oom_is_retried_once(monkeypatch):
    """An OOM in optimizer.step(): a smaller micro-batch cannot help; the cache is freed and the step
    retried once (same update as without the OOM); a second OOM is a clear error."""
    cfg = {"model": "tiny-bert", "batch_size": 8, "micro_batch_size": 4, "epochs": 1, "max_len": 16, "lr": 1e-3,
           "seed": 1, "precision": "fp32"}
    data = _data()
    states = {}
    ref = training.train(cfg, data=data, report=lambda m, d: states.__setitem__("ref", checkpoints.load_state(d)))
    fail_at = {}

    class FlakyAdamW(torch.optim.AdamW):
        calls = 0

        def step(self, *a, **k):
            FlakyAdamW.calls += 1
            if FlakyAdamW.calls in fail_at.get("calls", ()):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().step(*a, **k)

    monkeypatch.setattr(torch.optim, "AdamW", FlakyAdamW)
    fail_at["calls"] = (1, 3)    # the first step (AdamW's state is allocated there) and a later one
    out = training.train(cfg, data=data, report=lambda m, d: states.__setitem__("oom", checkpoints.load_state(d)))
    assert FlakyAdamW.calls == 3 + 2
    assert out[-1]["train_loss"] == ref[-1]["train_loss"] and out[-1]["optimizer_steps"] == 3
    assert all(torch.equal(states["ref"]["model"][k], states["oom"]["model"][k]) for k in states["ref"]["model"])
    FlakyAdamW.calls, fail_at["calls"] = 0, (2, 3)   # twice in a row: no retry can help
    with pytest.raises(torch.cuda.OutOfMemoryError, match="optimizer step.*cannot help"):
        training.train(cfg, data=data)


def test_auto_micro_batch_on_cpu():
    c = config.resolve_config({"model": "tiny-bert", "batch_size": 64, "micro_batch_size": "auto"})
    assert memory.auto_micro_batch(c, torch.device("cpu"), "fp32") == 16
    c = config.resolve_config({"model": "tiny-bert", "batch_size": 8, "micro_batch_size": "auto"})
    assert memory.auto_micro_batch(c, torch.device("cpu"), "fp32") == 8


def test_gpu_fraction_packing(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    res = Resources(gpu_fraction={32: 0.25, 256: 0.5, "default": 1})
    per_trial, conc, threads = ray_setup.resources_for(res, n_trials=16)
    assert per_trial({"batch_size": 16}) == {"cpu": 4, "gpu": 0.25}   # 4 small trials share the GPU
    assert per_trial({"batch_size": 256})["gpu"] == 0.5
    assert per_trial({"batch_size": 1024})["gpu"] == 1
    assert conc is None and threads == 4
    per_trial, _, _ = ray_setup.resources_for(Resources(), n_trials=16)
    assert per_trial({"batch_size": 16}) == {"cpu": 16, "gpu": 1}      # default: one GPU per trial


def test_cpu_resources_split_cores(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    per_trial, conc, threads = ray_setup.resources_for(Resources(), n_trials=8)
    assert conc == 2 and threads == 1 and per_trial({"batch_size": 8}) == {"cpu": 1, "gpu": 0}


@pytest.mark.slow   # a benchmark run end to end: the full suite's, not the fast tier's
def test_bench_writes_table_with_baseline_ratio(tmp_path, capsys):
    assert bench.main(["--models", "tiny-bert", "--batch-sizes", "8", "--steps", "2", "--max-len", "32",
                       "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "bench.csv")
    assert list(df.case) == ["tune_study", "tune_study, noise scale off", "HF Trainer"]
    ours = df[df.case == "tune_study"].iloc[0]
    off = df[df.case == "tune_study, noise scale off"].iloc[0]
    hf = df[df.case == "HF Trainer"].iloc[0]
    assert ours.samples_per_s > 0 and hf.samples_per_s > 0
    assert ours.x_vs_trainer == pytest.approx(ours.samples_per_s / hf.samples_per_s)
    assert ours.noise_scale_cost == pytest.approx(off.samples_per_s / ours.samples_per_s - 1)
    assert re.search(r"\| tune_study +\|", (tmp_path / "bench.md").read_text())


def test_bench_table_takes_the_median_of_repeats_and_the_noise_scale_cost():
    """--repeats: one row per case at its median rate; the cost compares the two medians."""
    rows = [{"model": "m", "case": case, "batch": 64, "samples_per_s": r, "flops_per_sample": 1.0}
            for r_on, r_off in ((100.0, 110.0), (90.0, 120.0), (95.0, 100.0))
            for case, r in (("tune_study", r_on), ("tune_study, noise scale off", r_off))]
    rows.append({"model": "m", "case": "tune_study", "batch": 16, "error": "OOM"})
    df = bench.table(rows, math.nan)
    assert list(zip(df.case, df.batch)) == [("tune_study", 64), ("tune_study, noise scale off", 64),
                                             ("tune_study", 16)]
    assert df.samples_per_s.tolist()[:2] == [95.0, 110.0]
    assert df.noise_scale_cost.iloc[0] == pytest.approx(110.0 / 95.0 - 1)
    assert math.isnan(df.noise_scale_cost.iloc[1]) and df.error.iloc[2] == "OOM"
