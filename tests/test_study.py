"""The study runner end to end on the smoke study: the repeat stage (and --resume of a killed one),
one Ctrl-C / SIGTERM ends a --keep-alive driver, and remote storage (file://) holds the best models."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from driver_procs import dashboard_procs, free_port, kill_tree, ray_procs

from tune_study import grid

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
REPEAT = {"top": 2, "seeds": [1, 2]}


def _smoke_file(tmp: Path, **extra) -> Path:
    """The smoke study (name smoke) with extra top-level keys, as a study file a user would write."""
    path = tmp / "smoke.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(SMOKE.read_text()), **extra}, sort_keys=False))
    return path


def _start(tmp: Path, args: list[str], ray_tmp: str) -> tuple[subprocess.Popen, Path]:
    """``python -m tune_study.grid ARGS --no-report`` as its own process group, output in driver.log."""
    log = tmp / "driver.log"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tune_study.grid", *args, "--no-report"], cwd=ROOT,
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _wait_for(cond, proc, what: str, timeout: float = 420) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, f"driver ended (rc {proc.returncode}) before {what}"
        assert time.time() < deadline, f"{what} never came"
        time.sleep(0.1)


def _keep_alive_args(space: Path, tmp: Path) -> list[str]:
    """A --keep-alive driver with its dashboard on a port of its own."""
    return ["--space", str(space), "--results-dir", str(tmp / "res"), "--keep-alive",
            "--dashboard-port", str(free_port())]


def _stop_keep_alive(proc, log: Path, ray_tmp: str, sig) -> None:
    """The driver waits in --keep-alive, its dashboard up; one signal must end it cleanly within seconds."""
    try:
        _wait_for(lambda: "keeping the driver alive" in log.read_text(), proc, "the keep-alive wait")
        assert dashboard_procs(ray_tmp), "--keep-alive without a dashboard"
        time.sleep(1)
        os.kill(proc.pid, sig)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"driver still up 20 s after {sig.name}:\n{log.read_text()[-2000:]}")
        assert rc == 0, log.read_text()[-2000:]
        deadline = time.time() + 15
        while ray_procs(ray_tmp) and time.time() < deadline:
            time.sleep(0.5)
        assert not ray_procs(ray_tmp), "Ray processes left behind"
    finally:
        if proc.poll() is None:
            kill_tree(proc, ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _check_repeats(trials: pd.DataFrame) -> None:
    """4 repeat trials: the 2 best grid configs (val acc, ties by val loss) x seeds 1 and 2, all finished."""
    first = trials[trials.stage == "grid"]
    rep = trials[trials.stage == "repeat"]
    assert len(first) == 4 and len(rep) == 4, trials[["stage", "batch_size", "scheduler", "seed"]]
    assert (rep.status == "TERMINATED").all() and not rep.stopped_early.any()
    assert (rep.epochs_run == 2).all()
    assert sorted(rep.seed) == [1, 1, 2, 2] and (first.seed == 0).all()
    ranked = first.sort_values(["best_val_acc", "best_val_loss"], ascending=[False, True])
    key = lambda df: sorted(zip(df.best_val_acc.round(9), df.best_val_loss.round(9)))
    chosen = first.merge(rep[["batch_size", "scheduler"]].drop_duplicates(), on=["batch_size", "scheduler"])
    assert len(chosen) == 2 and key(chosen) == key(ranked.head(2))
    for _, g in rep.groupby(["batch_size", "scheduler"]):
        assert sorted(g.seed) == [1, 2]


def test_repeat_stage_and_ctrl_c_ends_keep_alive(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths have a length limit
    proc, log = _start(tmp_path, _keep_alive_args(_smoke_file(tmp_path, repeat=REPEAT), tmp_path), ray_tmp)
    _stop_keep_alive(proc, log, ray_tmp, signal.SIGINT)
    study_dir = tmp_path / "res" / "smoke"
    assert (study_dir / "repeat").is_dir() and (study_dir / "tune").is_dir()
    trials = pd.read_parquet(study_dir / "trials.parquet")
    _check_repeats(trials)
    history = pd.read_parquet(study_dir / "history.parquet")
    assert set(history.stage) == {"grid", "repeat"}
    assert set(history.trial_id) == set(trials.trial_id)


def test_sigterm_ends_keep_alive_and_remote_storage_holds_best_models(tmp_path):
    store = tmp_path / "store"
    space = _smoke_file(tmp_path, storage_path=f"file://{store}")
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    proc, log = _start(tmp_path, _keep_alive_args(space, tmp_path), ray_tmp)
    _stop_keep_alive(proc, log, ray_tmp, signal.SIGTERM)
    trials = pd.read_csv(tmp_path / "res" / "smoke" / "trials.csv")
    assert len(trials) == 4 and (trials.status == "TERMINATED").all()
    for uri in trials.best_model_path:
        assert uri.startswith(f"file://{store}/smoke/tune/"), uri
        path = Path(uri[len("file://"):])
        assert ray_tmp not in str(path) and "/tmp/ray" not in str(path)
        assert (path / "config.json").is_file(), sorted(p.name for p in path.parent.iterdir())
        assert any(path.glob("*.safetensors")) or (path / "pytorch_model.bin").is_file()


def test_resume_finishes_a_killed_repeat_stage(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    results = tmp_path / "res"
    study_dir = results / "smoke"
    space = _smoke_file(tmp_path, repeat=REPEAT)
    proc, log = _start(tmp_path, ["--space", str(space), "--results-dir", str(results), "--no-dashboard"], ray_tmp)
    try:
        _wait_for(lambda: any((study_dir / "repeat").glob("tiny-bert_*/checkpoint_*")), proc,
                  "a repeat trial's first checkpoint")
        assert ray_procs(ray_tmp) and not dashboard_procs(ray_tmp), "a --no-dashboard driver's Ray runs a dashboard"
        assert "Ray dashboard: not running" in log.read_text()
    finally:
        kill_tree(proc, ray_tmp)
    assert not ray_procs(ray_tmp), "orphan Ray processes left behind"
    shutil.rmtree(ray_tmp, ignore_errors=True)
    grid_logs = {p: p.stat().st_size for p in (study_dir / "tune").glob("tiny-bert_*/result.json")}
    assert len(grid_logs) == 4
    before = pd.read_parquet(study_dir / "trials.parquet")  # the first stage's export
    assert set(before.stage) == {"grid"} and (before.status == "TERMINATED").all()

    rc = grid.main(["--space", str(space), "--results-dir", str(results), "--resume", "--no-report", "--no-dashboard"])
    assert rc == 0
    trials = pd.read_parquet(study_dir / "trials.parquet")
    _check_repeats(trials)
    # no grid trial ran again: same trials, same result logs
    g = trials[trials.stage == "grid"].set_index("trial_id").sort_index()
    b = before.set_index("trial_id").sort_index()
    assert g.index.tolist() == b.index.tolist()
    assert g.wall_time_s.tolist() == b.wall_time_s.tolist()
    assert {p: p.stat().st_size for p in grid_logs} == grid_logs
