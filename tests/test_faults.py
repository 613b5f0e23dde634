"""Faults: the driver SIGKILLed at three moments, a trial that crashes once, a corrupt checkpoint,
and determinism. Studies run in a subprocess (its own Ray, in its own RAY_TMPDIR so every process it
started can be found and stopped) and resume in this process."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from driver_procs import kill_tree, ray_procs

from tune_study import grid
from tune_study.training.checkpoints import PRUNED_MARKER, checkpoint_epoch
from tune_study.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
CRASH_FLAG = "TUNE_STUDY_TEST_CRASH_DIR"


def _crash_once_hook():
    """Ray worker setup hook (installed by this test module, not by product code). While the file
    ``armed`` exists in the flag folder, the first batch-8 constant trial raises once right after its
    epoch-1 report (its checkpoint exists); if ``armed`` says "corrupt", it first tears that
    checkpoint's state.pt, as a crash in mid-write would; if it says "enospc", every attempt of that
    trial fails at its first report with OSError(ENOSPC), as on a full disk."""
    import tune_study.tuning.trainable as trial_module

    flag_dir = os.environ.get(CRASH_FLAG)
    if not flag_dir or getattr(trial_module, "_crash_hook_installed", False):
        return
    real_trainable = trial_module.trainable

    def trainable(config, **params):
        from ray import tune

        real_tune_report = tune.report

        def report(metrics, checkpoint=None):
            import errno

            armed = os.path.join(flag_dir, "armed")
            if os.path.exists(armed) and open(armed).read() == "enospc" and config["batch_size"] == 8 \
                    and config["scheduler"] == "constant":
                # a full disk: every attempt fails writing its first checkpoint
                raise OSError(errno.ENOSPC, "No space left on device", os.path.join(params["experiment_dir"], "x"))
            real_tune_report(metrics, checkpoint=checkpoint)
            if os.path.exists(armed) and metrics["epoch"] == 1 and config["batch_size"] == 8 \
                    and config["scheduler"] == "constant":
                try:  # exactly once across all processes
                    os.close(os.open(os.path.join(flag_dir, "crashed"), os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    return
                if open(armed).read() == "corrupt":
                    trial = os.path.join(params["experiment_dir"], tune.get_context().get_trial_name())
                    for name in os.listdir(trial):
                        f = os.path.join(trial, name, "state.pt")
                        if name.startswith("checkpoint_") and os.path.exists(f):
                            with open(f, "r+b") as fh:
                                fh.truncate(1000)
                raise RuntimeError("injected crash after epoch 1")

        tune.report = report
        try:
            return real_trainable(config, **params)
        finally:
            tune.report = real_tune_report

    trial_module.trainable = trainable
    trial_module._crash_hook_installed = True


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    import ray
    import ray.cloudpickle

    flag_dir = tmp_path_factory.mktemp("crash")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Workers cannot import this test module: ship the hook by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    os.environ[CRASH_FLAG] = str(flag_dir)
    ray.shutdown()   # the shared local Ray, if a module before this one started it: this one has a worker hook
    ray.init(num_cpus=2, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": _crash_once_hook,
                          "env_vars": {CRASH_FLAG: str(flag_dir)}})
    try:
        yield flag_dir
    finally:
        ray.shutdown()
        os.environ.pop(CRASH_FLAG, None)


# ----------------------------------------------------------------------------- helpers

def _start_study(results: Path, ray_tmp: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp}
    env.pop(CRASH_FLAG, None)
    return subprocess.Popen([sys.executable, "-m", "tune_study.grid", "--space", str(SMOKE),
                             "--results-dir", str(results), "--no-report", "--no-dashboard"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _checkpoint_epochs(study_dir: Path) -> dict[str, int]:
    """Per trial folder: the latest epoch with a complete checkpoint on disk (a finished trial's
    checkpoints count too, although their training state was removed: keep_when_finished)."""
    out = {}
    for trial in (study_dir / "tune").glob("tiny-bert_*"):
        # complete checkpoints only: one torn by the kill is not a checkpoint
        done = [e for c in trial.glob("checkpoint_*") if (e := checkpoint_epoch(c) or _pruned_epoch(c))]
        if done:
            out[trial.name.rsplit("_", 1)[-1]] = max(done)
    return out


def _pruned_epoch(checkpoint: Path) -> int | None:
    if not (checkpoint / PRUNED_MARKER).exists():
        return None
    return json.loads((checkpoint / "meta.json").read_text())["epoch"]


MOMENTS = {
    # Tune wrote tuner.pkl; the kill is made to fall before its first experiment snapshot by
    # removing what came after (SNAPSHOT_LOST): Tune's own restore would start a junk trial there
    "before_first_snapshot": lambda d: (d / "tune" / "tuner.pkl").exists(),
    # the experiment exists, no trial has a checkpoint yet
    "before_first_checkpoint": lambda d: (d / "tune").exists() and any((d / "tune").glob("tiny-bert_*")),
    # at least one epoch checkpointed
    "after_first_checkpoint": lambda d: len(_checkpoint_epochs(d)) >= 1,
    # two trials have finished (a finished trial's checkpoints are pruned: keep_when_finished); with
    # early stopping one may finish after epoch 1, so "both epochs done" could come only at the end
    "after_two_trials_finished": lambda d: sum(
        any((c / PRUNED_MARKER).exists() for c in t.glob("checkpoint_*")) for t in (d / "tune").glob("tiny-bert_*")) >= 2,
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_driver_killed_then_resumed(ray_cluster, tmp_path, moment):
    ray_tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths have a length limit
    results = tmp_path / "results"
    study_dir = results / "smoke"
    proc = _start_study(results, ray_tmp)
    try:
        deadline = time.time() + 240
        while not MOMENTS[moment](study_dir):
            assert proc.poll() is None, f"study ended (rc {proc.returncode}) before moment {moment}"
            assert time.time() < deadline, f"moment {moment} never came"
            time.sleep(0.05)
    finally:
        kill_tree(proc, ray_tmp)
    assert not ray_procs(ray_tmp), "orphan Ray processes left behind"
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if moment == "before_first_snapshot":
        for f in [*(study_dir / "tune").glob("*-state-*.json"), *(study_dir / "tune").glob("*/checkpoint_*")]:
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    had = _checkpoint_epochs(study_dir)

    rc = grid.main(["--space", str(SMOKE), "--results-dir", str(results), "--resume", "--no-report"])
    assert rc == 0
    trials = pd.read_parquet(study_dir / "trials.parquet")
    history = pd.read_parquet(study_dir / "history.parquet")
    assert len(trials) == 4 and (trials.status == "TERMINATED").all()
    assert set(zip(trials.batch_size, trials.scheduler)) == {(8, "constant"), (8, "linear"),
                                                              (32, "constant"), (32, "linear")}
    for t in trials.itertuples():
        h = history[history.trial_id == t.trial_id].sort_values("epoch")
        assert list(h.epoch) == list(range(1, t.epochs_run + 1)), "an epoch was run twice or lost"
        assert t.optimizer_steps == t.epochs_run * math.ceil(240 / t.batch_size)
        suffix = t.trial_id.rsplit("_", 1)[-1]
        if suffix in had:
            # A trial with a checkpoint went on from it: nothing after its checkpoint came from epoch 0.
            later = h[h.epoch > had[suffix]]
            assert (later.resumed_from_epoch >= had[suffix]).all()


def test_trial_crash_is_retried_from_checkpoint(ray_cluster, tmp_path):
    flag_dir = ray_cluster
    (flag_dir / "crashed").unlink(missing_ok=True)
    (flag_dir / "armed").write_text("crash")
    try:
        rc = grid.main(["--space", str(SMOKE), "--results-dir", str(tmp_path), "--no-report"])
    finally:
        (flag_dir / "armed").unlink()
    assert rc == 0
    assert (flag_dir / "crashed").exists(), "the injected crash did not happen"
    trials = pd.read_parquet(tmp_path / "smoke" / "trials.parquet")
    history = pd.read_parquet(tmp_path / "smoke" / "history.parquet")
    assert (trials.status == "TERMINATED").all()
    crashed = trials[(trials.batch_size == 8) & (trials.scheduler == "constant")].iloc[0]
    h = history[history.trial_id == crashed.trial_id].sort_values("epoch")
    assert list(h.epoch) == [1, 2]
    assert h.iloc[1].resumed_from_epoch == 1  # retried from its epoch-1 checkpoint, not from scratch


def test_corrupt_checkpoint_gives_clear_error(ray_cluster, tmp_path):
    """A trial crashes and its checkpoint is torn: the retry stops with a clear "corrupt" error
    instead of silently starting the trial over."""
    flag_dir = ray_cluster
    (flag_dir / "crashed").unlink(missing_ok=True)
    (flag_dir / "armed").write_text("corrupt")
    try:
        rc = grid.main(["--space", str(SMOKE), "--results-dir", str(tmp_path), "--no-report"])
    finally:
        (flag_dir / "armed").unlink()
    assert (flag_dir / "crashed").exists()
    trials = pd.read_parquet(tmp_path / "smoke" / "trials.parquet")
    bad = trials[(trials.batch_size == 8) & (trials.scheduler == "constant")]
    others = trials.drop(bad.index)
    assert rc == 1 and (bad.status == "ERROR").all() and (others.status == "TERMINATED").all()
    assert bad.error.str.contains("corrupt").all(), bad.error.tolist()
    history = pd.read_parquet(tmp_path / "smoke" / "history.parquet")
    assert list(history[history.trial_id == bad.trial_id.iloc[0]].epoch) == [1]  # no restart from 0


def test_full_disk_is_named_and_resume_finishes(ray_cluster, tmp_path, capsys):
    """A trial that cannot write (ENOSPC, every retry): the study ends with the full disk named in
    its last line, the finished trials exported; --resume after space is freed finishes it."""
    flag_dir = ray_cluster
    (flag_dir / "armed").write_text("enospc")
    try:
        rc = grid.main(["--space", str(SMOKE), "--results-dir", str(tmp_path), "--no-report"])
    finally:
        (flag_dir / "armed").unlink()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    study_dir = tmp_path / "smoke"
    assert rc == 1
    assert last.startswith("error: out of disk space (ENOSPC) under " + str(study_dir)), last
    assert "1 trial(s) stopped" in last and "--resume" in last
    trials = pd.read_parquet(study_dir / "trials.parquet")
    full = (trials.batch_size == 8) & (trials.scheduler == "constant")
    assert (trials[full].status == "ERROR").all() and (trials[~full].status == "TERMINATED").all()

    rc = grid.main(["--space", str(SMOKE), "--results-dir", str(tmp_path), "--resume", "--no-report"])
    assert rc == 0
    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert len(trials) == 4 and (trials.status == "TERMINATED").all()
    history = pd.read_parquet(study_dir / "history.parquet")
    for t in trials.itertuples():
        assert list(history[history.trial_id == t.trial_id].sort_values("epoch").epoch) == list(
            range(1, t.epochs_run + 1))


def test_same_seed_same_history():
    data = _tiny_data()
    cfg = {"model": "tiny-bert", "batch_size": 6, "micro_batch_size": 4, "epochs": 2, "max_len": 16,
           "lr": 1e-3, "seed": 3, "precision": "fp32"}
    timing = {"samples_per_s", "epoch_train_s", "eval_s", "train_time_s"}
    runs = []
    for _ in range(2):
        hist = train(cfg, data=data)
        runs.append([{k: v for k, v in h.items() if k not in timing} for h in hist])
    assert runs[0] == runs[1]
    other = train({**cfg, "seed": 4}, data=data)
    assert other[-1]["train_loss"] != runs[0][-1]["train_loss"]


def _tiny_data():
    g = torch.Generator().manual_seed(0)

    def split(n):
        return {"input_ids": torch.randint(1000, 2000, (n, 16), generator=g, dtype=torch.int32),
                "attention_mask": torch.ones(n, 16, dtype=torch.int8),
                "labels": torch.arange(n) % 2}

    return {"train": split(20), "val": split(6), "test": split(6)}
