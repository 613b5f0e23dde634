"""The study folder on the driver: one driver at a time, the study as run cannot drift, a damaged
Ray experiment state or an unreadable study file is one line (exit 2) and changes nothing, and a
finished trial's folder is settled. No Ray here: every refusal comes before Ray starts."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tune_study import grid
from tune_study.config import load_space
from tune_study.errors import StudyError
from tune_study.files import write_atomically
from tune_study.training import checkpoints as ck
from tune_study.training.checkpoints import PRUNED_MARKER
from tune_study.tuning.driver_lock import LOCK_FILE, DriverLock
from tune_study.tuning.study_folder import changed_keys, restorable, write_study_as_run
from tune_study.tuning.trial_files import estimate_disk, is_out_of_space, settle_finished_trial

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"


def _listing(d: Path) -> dict:
    """What a refusal must leave as it was (the driver lock file, which a folder keeps, aside)."""
    return {str(p.relative_to(d)): p.read_bytes() if p.is_file() else None
            for p in sorted(d.rglob("*")) if p.name != LOCK_FILE}


def _started_study(tmp_path: Path, text: str | None = None) -> tuple[Path, Path]:
    """A study folder as a started study leaves it (space.yaml and its record), without running it."""
    src = tmp_path / "smoke.yaml"
    src.write_text(text or SMOKE.read_text())
    study_dir = tmp_path / "results" / "smoke"
    write_study_as_run(study_dir, src, load_space(src))
    return src, study_dir


def _hold_lock(study_dir: Path) -> subprocess.Popen:
    """Another driver: a process that holds the study's lock until it is killed."""
    code = ("import sys, time; from tune_study.tuning.driver_lock import DriverLock; "
            "DriverLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(study_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ----------------------------------------------------------------------------- one driver per study folder

def test_second_driver_is_refused_and_a_killed_one_never_blocks(tmp_path, capsys):
    src, study_dir = _started_study(tmp_path)
    holder = _hold_lock(study_dir)
    try:
        before = _listing(study_dir)
        for argv in ([], ["--resume"]):
            rc = grid.main(["--space", str(src), "--results-dir", str(study_dir.parent), *argv])
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == 2 and len(err) == 1, err
            assert "another driver is running this study" in err[0] and f"pid {holder.pid}" in err[0]
        assert _listing(study_dir) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # kill -9 released it: the lock is free at once
    with DriverLock(study_dir):
        pass


def test_two_fresh_drivers_one_folder(tmp_path):
    """Two new runs started together: the second sees the first's lock, not an empty folder."""
    study_dir = tmp_path / "results" / "smoke"
    holder = _hold_lock(study_dir)
    try:
        with pytest.raises(StudyError, match="another driver"):
            DriverLock(study_dir).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_not_inherited_by_child_processes(tmp_path):
    """Ray's processes are children of the driver: they must not keep a dead driver's lock."""
    study_dir = tmp_path / "s"
    code = ("import subprocess, sys, time; from tune_study.tuning.driver_lock import DriverLock; "
            "DriverLock(sys.argv[1]).acquire(); "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print(c.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(study_dir)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait()
        with DriverLock(study_dir):   # the child still runs, the lock is free
            assert os.kill(child, 0) is None
    finally:
        os.kill(child, signal.SIGKILL)


# ----------------------------------------------------------------------------- the study as run

def test_resume_refuses_an_edited_study_copy(tmp_path, capsys):
    src, study_dir = _started_study(tmp_path)
    copy = study_dir / "space.yaml"
    copy.write_text(copy.read_text().replace("batch_size: [8, 32]", "batch_size: [16, 64]"))
    before = _listing(study_dir)
    rc = grid.main(["--space", str(src), "--results-dir", str(study_dir.parent), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "space.yaml: key 'axes.batch_size': edited since the study started" in err[0]
    assert _listing(study_dir) == before


def test_resume_refuses_a_study_file_that_differs_from_the_study_as_run(tmp_path, capsys):
    src, study_dir = _started_study(tmp_path)
    src.write_text(src.read_text().replace("lr: 1.0e-3", "lr: 2.0e-3").replace("epochs: 2", "epochs: 3"))
    rc = grid.main(["--space", str(src), "--results-dir", str(study_dir.parent), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "differs from the study as run" in err[0] and "fixed.epochs, fixed.lr" in err[0]


def test_comment_edits_are_not_drift(tmp_path):
    from tune_study.tuning.study_folder import check_study_as_run

    src, study_dir = _started_study(tmp_path)
    copy = study_dir / "space.yaml"
    copy.write_text("# a note added later\n" + copy.read_text())
    study = check_study_as_run(study_dir, load_space, src)
    assert study.axes["batch_size"] == [8, 32] and study.name == "smoke"
    assert changed_keys(study, load_space(SMOKE)) == []


@pytest.mark.parametrize("where", ["given", "copy"])
def test_binary_study_file_is_one_line(tmp_path, capsys, where):
    src, study_dir = _started_study(tmp_path)
    garbage = bytes(range(256)) * 4
    (src if where == "given" else study_dir / "space.yaml").write_bytes(garbage)
    argv = ["--space", str(src), "--results-dir", str(study_dir.parent)]
    rc = grid.main(argv + (["--resume"] if where == "copy" else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "not a text file" in err[0] and ("space.yaml" in err[0] or "smoke.yaml" in err[0])


# ----------------------------------------------------------------------------- Ray's experiment state

def test_resume_refuses_a_damaged_experiment_state(tmp_path, capsys):
    src, study_dir = _started_study(tmp_path)
    exp = study_dir / "tune"
    exp.mkdir()
    state = json.dumps({"trial_data": [["{}", "{}"]] * 4, "runner_data": {}, "stats": {}})
    (exp / "experiment_state-2026-12-01_10-00-00.json").write_text(state[: len(state) // 2])
    before = _listing(study_dir)
    rc = grid.main(["--space", str(src), "--results-dir", str(study_dir.parent), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "experiment_state-2026-12-01_10-00-00.json: Ray's experiment state is damaged" in err[0]
    assert _listing(study_dir) == before
    # a truncated tuner.pkl (a full disk during its write) is refused the same way
    (exp / "experiment_state-2026-12-01_10-00-00.json").write_text(state)
    (exp / "tuner.pkl").write_bytes(b"\x80\x05\x95 truncated")
    rc = grid.main(["--space", str(src), "--results-dir", str(study_dir.parent), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "tuner.pkl: Ray's experiment file is truncated" in err[0], err


def test_restorable_needs_an_experiment_snapshot(tmp_path):
    """Tuner.can_restore looks for tuner.pkl alone; without a snapshot there is nothing to restore."""
    exp = tmp_path / "tune"
    assert not restorable(str(exp))            # no experiment at all
    exp.mkdir()
    (exp / "tuner.pkl").write_bytes(b"\x80\x05N.")
    assert not restorable(str(exp))            # the driver died before Tune's first snapshot
    (exp / "experiment_state-2026-12-01_10-00-00.json").write_text("{}")
    assert restorable(str(exp))
    (exp / "tuner.pkl").unlink()
    assert not restorable(str(exp))


# ----------------------------------------------------------------------------- a full disk

def test_atomic_write_keeps_the_previous_file_on_enospc(tmp_path):
    f = tmp_path / "trials.csv"
    f.write_text("old, complete\n")

    def half_then_full(tmp):
        Path(tmp).write_text("new, half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as e:
        write_atomically(f, half_then_full)
    assert is_out_of_space(e.value)
    assert f.read_text() == "old, complete\n" and sorted(p.name for p in tmp_path.iterdir()) == ["trials.csv"]


def test_out_of_space_is_recognised_through_causes_and_texts():
    inner = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise inner
        except OSError as e:
            raise RuntimeError("Tune could not save the experiment") from e
    except RuntimeError as outer:
        assert is_out_of_space(outer)
    assert is_out_of_space("OSError: [Errno 28] No space left on device: '/r/tune/t/checkpoint_000001'")
    assert not is_out_of_space(RuntimeError("injected crash after epoch 1"))
    assert not is_out_of_space(None) and not is_out_of_space("")


# ----------------------------------------------------------------------------- finished trials and disk

def _trial_folder(root: Path, best_epoch: int, prev: bool) -> Path:
    t = root / "trial"
    for e in (1, 2):
        c = t / f"checkpoint_00000{e - 1}"
        c.mkdir(parents=True)
        (c / ck.CHECKPOINT_FILE).write_bytes(b"x" * 1000)
        (c / "history.json").write_text("[]")
        (c / "meta.json").write_text(json.dumps({"epoch": e, "bytes": 1000}))
    for name, epoch in ((ck.BEST_MODEL, best_epoch), *([(ck.PREVIOUS, 1)] if prev else [])):
        (t / name).mkdir()
        ck.mark_best_epoch(t / name, epoch)
    return t


@pytest.mark.parametrize("keep", ["best_model", "checkpoints"])
def test_settle_finished_trial(tmp_path, keep):
    t = _trial_folder(tmp_path, best_epoch=2, prev=True)
    settle_finished_trial(pafs.LocalFileSystem(), str(t), 2, keep)
    assert not (t / ck.PREVIOUS).exists() and ck.best_model_epoch(t / ck.BEST_MODEL) == 2
    for c in t.glob("checkpoint_*"):
        assert (c / ck.CHECKPOINT_FILE).exists() == (keep == "checkpoints")
        assert (c / PRUNED_MARKER).exists() == (keep == "best_model")
        assert (c / "history.json").exists()   # what the exports read stays


def test_settle_keeps_the_previous_model_when_best_model_is_not_the_reported_one(tmp_path):
    t = _trial_folder(tmp_path, best_epoch=2, prev=True)
    settle_finished_trial(pafs.LocalFileSystem(), str(t), 1, "checkpoints")
    assert (t / ck.PREVIOUS).exists()   # never delete the copy that may be the right one


def test_pruned_checkpoint_says_why_it_cannot_resume(tmp_path):
    t = _trial_folder(tmp_path, best_epoch=2, prev=False)
    settle_finished_trial(pafs.LocalFileSystem(), str(t), 2, "best_model")
    with pytest.raises(StudyError, match="keep_when_finished"):
        ck.load_state(t / "checkpoint_000001")


def test_disk_estimate_of_the_seed_study():
    """bert-base (109.5M parameters): a checkpoint is 1.31 GB, a best model 0.44 GB. The seed's 16
    trials keeping 2 checkpoints each end at about 49 GB; keeping only best models, at 7 GB."""
    from tune_study.models import parameter_count

    n = parameter_count("bert-base-random")
    assert n == 109_483_778
    keep_all = estimate_disk(n, 16, 4, 2, "checkpoints")
    assert keep_all.checkpoint_gb == pytest.approx(1.314, abs=1e-3) and keep_all.best_model_gb == pytest.approx(0.438, abs=1e-3)
    assert keep_all.end_gb == pytest.approx(16 * (0.438 + 2 * 1.314), abs=0.05)
    best_only = estimate_disk(n, 16, 4, 2, "best_model")
    assert best_only.end_gb == pytest.approx(16 * 0.438, abs=0.05)
    assert best_only.peak_gb == pytest.approx(4 * (3 * 1.314 + 2 * 0.438) + 12 * 0.438, abs=0.05)
    assert keep_all.peak_gb > best_only.peak_gb


def test_disk_warning_when_the_file_system_is_too_small(tmp_path, monkeypatch, capsys, caplog):
    from tune_study.tuning import trial_files

    study = load_space(SMOKE)
    monkeypatch.setattr(trial_files, "free_gb", lambda p: 0.001)
    trial_files.print_disk_estimate(study, 4, 2, str(tmp_path), ["tiny-bert"])
    assert capsys.readouterr().out.startswith("disk: about")
    assert "less than the" in caplog.text
    caplog.clear()
    monkeypatch.setattr(trial_files, "free_gb", lambda p: 1000.0)
    trial_files.print_disk_estimate(study, 4, 2, str(tmp_path), ["tiny-bert"])
    assert "less than the" not in caplog.text
