"""The GPU-throughput machinery that can be exercised on a CPU: OOM halving keeps the effective
batch and order, GPU-fraction packing, and the benchmark's table."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

import tune_study.checkpoints as checkpoints
import tune_study.memory as memory
import tune_study.training as training
from tune_study import bench, ray_setup


def _data(n=24, L=16):
    g = torch.Generator().manual_seed(0)

    def split(k):
        return {"input_ids": torch.randint(1000, 2000, (k, L), generator=g, dtype=torch.int32),
                "attention_mask": torch.ones(k, L, dtype=torch.int8), "labels": torch.arange(k) % 2}

    return {"train": split(n), "val": split(6), "test": split(6)}


def test_oom_halves_micro_batch_and_keeps_the_update(monkeypatch, tmp_path):
    cfg = {"model": "tiny-bert", "batch_size": 16, "epochs": 2, "max_len": 16, "lr": 1e-3, "seed": 1,
           "precision": "fp32"}
    data = _data()
    reference = training.train({**cfg, "micro_batch_size": 4}, data=data,
                               report=lambda m, d: torch.save(checkpoints.load_state(d)["model"], tmp_path / "ref.pt"))
    real = training.accumulate_gradients

    def tight_memory(model, micro_batches, autocast=None):
        if max(len(mb["labels"]) for mb in micro_batches) > 4:
            # Fail the way a real OOM does: after part of the work, its dropout draws and
            # gradients, which the retry must neither keep nor let shift the RNG.
            real(model, micro_batches[:1], autocast)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, micro_batches, autocast)

    monkeypatch.setattr(training, "accumulate_gradients", tight_memory)
    halved = training.train({**cfg, "micro_batch_size": 16}, data=data,
                            report=lambda m, d: torch.save(checkpoints.load_state(d)["model"], tmp_path / "oom.pt"))
    assert halved[-1]["micro_batch_size"] == 4 and halved[-1]["oom_halvings"] == 2
    assert halved[-1]["accumulation_steps"] == 4
    assert [h["optimizer_steps"] for h in halved] == [h["optimizer_steps"] for h in reference] == [2, 4]
    a, b = torch.load(tmp_path / "ref.pt", weights_only=True), torch.load(tmp_path / "oom.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same windows, same order, same micro-batches: same weights
    assert [h["train_loss"] for h in halved] == [h["train_loss"] for h in reference]


def test_auto_micro_batch_on_cpu():
    c = training.resolve_config({"model": "tiny-bert", "batch_size": 64, "micro_batch_size": "auto"})
    assert memory.auto_micro_batch(c, torch.device("cpu"), "fp32") == 16
    c = training.resolve_config({"model": "tiny-bert", "batch_size": 8, "micro_batch_size": "auto"})
    assert memory.auto_micro_batch(c, torch.device("cpu"), "fp32") == 8


def test_gpu_fraction_packing(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    study = {"resources": {"cpus_per_trial": "auto", "gpus_per_trial": "auto", "max_concurrent_trials": "auto",
                           "gpu_fraction": {32: 0.25, 256: 0.5, "default": 1}}}
    per_trial, conc, threads = ray_setup.resources_for(study, n_trials=16)
    assert per_trial({"batch_size": 16}) == {"cpu": 4, "gpu": 0.25}   # 4 small trials share the GPU
    assert per_trial({"batch_size": 256})["gpu"] == 0.5
    assert per_trial({"batch_size": 1024})["gpu"] == 1
    assert conc is None and threads == 4
    study["resources"]["gpu_fraction"] = None
    per_trial, _, _ = ray_setup.resources_for(study, n_trials=16)
    assert per_trial({"batch_size": 16}) == {"cpu": 16, "gpu": 1}      # default: one GPU per trial


def test_cpu_resources_split_cores(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    study = {"resources": {"cpus_per_trial": "auto", "gpus_per_trial": "auto", "max_concurrent_trials": "auto",
                           "gpu_fraction": None}}
    per_trial, conc, threads = ray_setup.resources_for(study, n_trials=8)
    assert conc == 2 and threads == 1 and per_trial({"batch_size": 8}) == {"cpu": 1, "gpu": 0}


def test_bench_writes_table_with_baseline_ratio(tmp_path, capsys):
    assert bench.main(["--models", "tiny-bert", "--batch-sizes", "8", "--steps", "2", "--max-len", "32",
                       "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "bench.csv")
    assert list(df.case) == ["tune_study", "HF Trainer"]
    ours = df[df.case == "tune_study"].iloc[0]
    hf = df[df.case == "HF Trainer"].iloc[0]
    assert ours.samples_per_s > 0 and hf.samples_per_s > 0
    assert ours.x_vs_trainer == pytest.approx(ours.samples_per_s / hf.samples_per_s)
    assert "| tune_study |" in (tmp_path / "bench.md").read_text()
