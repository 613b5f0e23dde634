"""A study's folder on the driver: where it is, one driver at a time, and the study as run.

``open_study_folder`` is what ``grid`` and ``search`` do before any training: find the folder, take
its driver lock (``driver_lock``), refuse to clobber a finished study or to resume a missing one,
and on ``--resume`` check that the study as run has not drifted (the ``space.yaml`` copy against the
record written when the study started, and the file given with ``--space``) and that Ray's
experiment state is readable. Every refusal is one line (StudyError, exit 2) and changes nothing.

Files: ``space.yaml`` (the study file as given), ``study_as_run.json`` (its validated settings and
the copy's sha256, written once when the study starts), ``driver.lock``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from ..config import Study
from ..errors import StudyError
from .driver_lock import LOCK_FILE, DriverLock

RECORD = "study_as_run.json"
OWN_FILES = {LOCK_FILE}   # what an otherwise empty study folder may hold (a start that was refused)


def study_paths(results_dir: str, study: Study) -> tuple[Path, str]:
    """(local study folder, Ray storage path: the study folder or the YAML's storage_path URI/dir)."""
    study_dir = Path(results_dir).expanduser().resolve() / study.name
    storage = study.storage_path
    if storage is None:
        storage = str(study_dir)
    elif "://" not in storage:
        storage = str(Path(storage).expanduser().resolve() / study.name)
    else:
        storage = storage.rstrip("/") + "/" + study.name
    return study_dir, storage


def check_study_dir(study_dir: Path, resume: bool) -> None:
    """Refuse to clobber a study, to resume a missing one, or to write where we can't. Writes nothing."""
    if resume:
        if not (study_dir / "space.yaml").exists():
            raise StudyError(f"--resume: no study at {study_dir} (nothing to resume; run without --resume)")
        return
    if study_dir.exists() and (not study_dir.is_dir() or {p.name for p in study_dir.iterdir()} - OWN_FILES):
        raise StudyError(f"study folder {study_dir} already exists: add --resume to finish it, "
                         f"or pick another --results-dir or study name (nothing was overwritten)")
    ancestor = study_dir.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StudyError(f"--results-dir: cannot write to {study_dir.parent}: {ancestor} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as e:
        raise StudyError(f"--results-dir: cannot write to {study_dir.parent}: {e.strerror or e}") from e


# ----------------------------------------------------------------------------- the study as run

def _settings(study: Study | dict) -> dict:
    """What defines a study's trials (``Study.settings``); a dict is a record's, read back."""
    return study.settings() if isinstance(study, Study) else study


def _flat(d, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_keys(a: Study | dict, b: Study | dict) -> list[str]:
    fa, fb = _flat(_settings(a)), _flat(_settings(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k, "<unset>") != fb.get(k, "<unset>"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_study_as_run(study_dir: Path, space_path: str | Path, study: Study) -> None:
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(space_path, study_dir / "space.yaml")
        (study_dir / RECORD).write_text(json.dumps({"sha256": _sha256(study_dir / "space.yaml"),
                                                    "settings": _settings(study)}, indent=1))
    except OSError as e:
        raise StudyError(f"--results-dir: cannot write to {study_dir}: {e.strerror or e}") from e


def check_study_as_run(study_dir: Path, load, given: str | Path | None) -> Study:
    """The study to resume: ``space.yaml`` as loaded by ``load``, refused (one line naming the
    changed keys) when it no longer matches the record of the study as run, or when ``given`` (the
    ``--space`` file) says otherwise."""
    copy = study_dir / "space.yaml"
    study = load(copy).model_copy(update={"name": study_dir.name})   # the copy's file name is not the study's
    record_file = study_dir / RECORD
    if record_file.exists():
        try:
            record = json.loads(record_file.read_text())
            ran, sha = record["settings"], record["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StudyError(f"{record_file}: unreadable record of the study as run ({type(e).__name__})") from e
        if _sha256(copy) != sha and (keys := changed_keys(study, ran)):
            raise StudyError(f"{copy}: key '{keys[0]}': edited since the study started (changed: "
                             f"{', '.join(keys)}); a resumed study runs as it was started: undo the edit, "
                             "or run the edited file as a new study under another name")
    if given is not None and Path(given).resolve() != copy.resolve():
        other = load(given)
        if (keys := changed_keys(other, study)):
            raise StudyError(f"{given}: key '{keys[0]}': differs from the study as run in {copy} (changed: "
                             f"{', '.join(keys)}); --resume finishes the study as it was started: undo the "
                             "edit, or run the edited file as a new study under another name")
    return study


# ----------------------------------------------------------------------------- Ray's experiment state

def check_experiment_state(exp_path: str) -> None:
    """Refuse to resume from a damaged Tune experiment state. Tune itself, on a state file it cannot
    read, logs "Restarting experiment" and starts one trial with an empty config, orphaning every
    trial of the study; we stop first. Local folders only (remote state is Tune's to read)."""
    exp = Path(exp_path)
    if "://" in exp_path or not exp.is_dir():
        return
    states = sorted(exp.glob("experiment_state-*.json"))
    if states:
        newest = states[-1]
        try:
            state = json.loads(newest.read_text())
            if not state.get("trial_data"):
                raise ValueError("it lists no trials")
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise StudyError(f"{newest}: Ray's experiment state is damaged ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:120]}); --resume would restart the experiment without "
                             "its trials, so nothing was changed: restore the file from a backup, or start "
                             "the study again under another name (its trial folders stay as they are)") from None
    for pkl in (exp / "tuner.pkl", exp / "trainable.pkl"):
        if pkl.exists() and not _complete_pickle(pkl):
            raise StudyError(f"{pkl}: Ray's experiment file is truncated (a full disk or a crash during its "
                             "write); nothing was changed: start the study again under another name")


def restorable(exp_path: str) -> bool:
    """Whether Tune can restore the experiment at ``exp_path`` (a folder or a storage URI): its
    ``tuner.pkl`` and a snapshot (``experiment_state-*.json``). ``Tuner.can_restore`` looks for
    ``tuner.pkl`` alone, which Tune writes before its first snapshot: a driver killed in between
    left nothing to restore, and Tune's restore would "restart" it into one trial with an empty
    config, so such an experiment is started again instead."""
    import pyarrow.fs

    if "://" in exp_path:
        fs, path = pyarrow.fs.FileSystem.from_uri(exp_path)
    else:
        fs, path = pyarrow.fs.LocalFileSystem(), exp_path
    names = {Path(i.path).name for i in fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))}
    return "tuner.pkl" in names and any(n.startswith("experiment_state-") and n.endswith(".json") for n in names)


def _complete_pickle(path: Path) -> bool:
    """A pickle ends with its STOP opcode: a file cut short by a full disk does not."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() == 0:
            return False
        f.seek(-1, 2)
        return f.read(1) == b"."


# ----------------------------------------------------------------------------- before training

def open_study_folder(study: Study, args, load, prepare) -> tuple[Study, Path, DriverLock, object]:
    """Everything before training, in the order that writes nothing on a refusal: the folder's
    checks, its driver lock, the study as run, ``prepare(study)`` (load and tokenize the data: bad
    data is an input error) and, for a new study, ``space.yaml`` and its record. Returns (study,
    study folder, the lock: held until the driver exits, prepare's result)."""
    from .results import EXPERIMENT, REPEAT_EXPERIMENT

    study_dir, storage = study_paths(args.results_dir, study)
    lock = DriverLock(study_dir)
    # A running study is refused by naming its driver; any other refusal comes before the lock
    # file is made, so a refused command writes nothing.
    if (holder := lock.holder()) is not None:
        raise StudyError(f"{study_dir}: another driver is running this study ({holder}); wait for it to "
                         "finish, or stop it, then use --resume")
    check_study_dir(study_dir, args.resume)
    created = not study_dir.exists()
    lock.acquire()   # (a driver that started since the check above is refused here)
    try:
        check_study_dir(study_dir, args.resume)
        if args.resume:
            study = check_study_as_run(study_dir, load, args.space)
            for experiment in (EXPERIMENT, REPEAT_EXPERIMENT):
                check_experiment_state(f"{storage}/{experiment}")
        prepared = prepare(study)
        if not args.resume:
            write_study_as_run(study_dir, args.space, study)
    except BaseException:
        lock.release()
        if created:  # nothing of ours may stay behind a refusal
            (study_dir / LOCK_FILE).unlink(missing_ok=True)
            if study_dir.is_dir() and not any(study_dir.iterdir()):
                study_dir.rmdir()
        raise
    return study, study_dir, lock, prepared
