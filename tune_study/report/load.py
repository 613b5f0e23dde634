"""Reading a study folder, read-only: its exports (trials, history, predictions) and space.yaml.

The report needs nothing else: not the Ray experiment (tune/, repeat/), not the checkpoints. What it
cannot use it either refuses (StudyError: one line naming the file; nothing is written) or leaves
out and names in ``StudyResults.notices``, which the report prints near its top:

  refused      no trials or history export; an export that exists but cannot be read (and has no
               readable twin) or lacks a column the report needs; a CSV and a Parquet of one table
               that both read but hold different rows; an unreadable space.yaml
  left out     an unreadable twin (the other file is used, and the report says the two could not be
               compared); predictions of trial ids the trials table does not know; one trial's
               predictions that do not cover the test rows every other trial has (too few, extra or
               duplicated rows, labels that disagree, values that are no probability): that trial
               is compared with the unpaired rule instead
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import columns as C
from ..errors import StudyError

log = logging.getLogger(__name__)

MAIN_AXES = ("model", "scheduler", "batch_size")
# the columns without which a table cannot be read as what it claims to be
REQUIRED = {C.TRIALS: ("trial_id", "stage", "status"), C.HISTORY: ("trial_id", "epoch"),
            C.PREDICTIONS: tuple(C.PREDICTION_COLUMNS)}


@dataclass
class StudyResults:
    """One study folder's data. ``predictions`` is None when the study did not store usable ones;
    ``notices`` says, one sentence each, what in the folder the report could not use."""
    path: Path
    space: dict                     # space.yaml as written ({} when missing)
    kind: str                       # "grid" or "search"
    trials: pd.DataFrame
    history: pd.DataFrame
    predictions: pd.DataFrame | None
    sources: dict = field(default_factory=dict)  # table -> the file it was read from
    notices: list[str] = field(default_factory=list)
    unusable: tuple = ()            # tables the folder holds that the report could not use at all

    @property
    def axes(self) -> list[str]:
        return list((self.space.get("axes") or {}))


def _why(e: Exception, f: Path | None = None) -> str:
    """The exception's first sentence, without the path the caller names anyway (pyarrow repeats it)."""
    msg = " ".join(str(e).split())
    if f is not None:
        msg = msg.replace(f" '{f}'", "").replace(str(f), "")
    msg = msg.split(". ")[0][:120]
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _read_file(f: Path, name: str) -> pd.DataFrame:
    # trial ids stay text in the CSV as in the Parquet ("00012" is not 12)
    df = pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_csv(f, dtype={"trial_id": str})
    missing = [c for c in REQUIRED[name] if c not in df.columns]
    if missing:
        raise ValueError(f"no column {missing[0]!r}")
    df["trial_id"] = df["trial_id"].astype(str)
    return df


def _read_table(d: Path, name: str, notices: list[str], required: bool = True) -> tuple[pd.DataFrame | None, str]:
    """The table ``name`` from its Parquet, else its CSV twin; StudyError when neither can be used."""
    files = [f for f in (d / f"{name}.parquet", d / f"{name}.csv") if f.exists()]
    if not files:
        if required:
            raise StudyError(f"report: {d / name}.parquet: missing (no {name}.parquet or {name}.csv in the study "
                             f"folder; the study has not exported it)")
        return None, ""
    read, failed = {}, {}
    for f in files:
        try:
            read[f] = _read_file(f, name)
        except Exception as e:  # a half-written or foreign file: pyarrow, the CSV parser, or a missing column
            failed[f] = _why(e, f)
    if not read:
        f = files[0]
        other = f" (and {files[1].name}: {failed[files[1]]})" if len(files) > 1 else ""
        raise StudyError(f"report: {f}: cannot be read ({failed[f]}){other}")
    if len(read) == 2:
        (fa, a), (fb, b) = read.items()
        ia, ib = set(a["trial_id"]), set(b["trial_id"])
        if len(a) != len(b) or ia != ib:
            what = (f"{len(a)} vs {len(b)} rows" if len(a) != len(b)
                    else f"trial ids only in one: {', '.join(sorted(ia ^ ib)[:3])}")
            raise StudyError(f"report: {fa} and {fb.name} disagree ({what}): one of them is stale; export the "
                             f"study again or remove the wrong one")
    f, df = next(iter(read.items()))
    for bad, why in failed.items():
        notices.append(f"{bad.name} could not be read ({why}); {f.name} was used instead, and whether the two "
                       f"agreed cannot be checked.")
    return df, f.name


def _read_space(d: Path) -> dict:
    from ..config import read_yaml

    f = d / "space.yaml"
    if not f.exists():
        return {}
    return read_yaml(f)   # an unreadable file (not UTF-8, unreadable, malformed YAML) is one line there


def load_study(path) -> StudyResults:
    """The study folder's tables and study file, as a ``StudyResults``; writes nothing.

    Raises StudyError (one line naming the file) when ``path`` is not a study folder or its exports
    cannot be used; see the module's docstring for what is refused and what is left out.
    """
    d = Path(path).expanduser()
    if not d.is_dir():
        raise StudyError(f"report: no study folder at {d}")
    if not any((d / f).exists() for f in ("space.yaml", "trials.parquet", "trials.csv")):
        raise StudyError(f"report: {d} is not a study folder (no space.yaml or trials.parquet/.csv)")
    notices: list[str] = []
    space = _read_space(d)
    kind = "search" if ("num_samples" in space or "search_seed" in space) else "grid"
    trials, t_src = _read_table(d, C.TRIALS, notices)
    history, h_src = _read_table(d, C.HISTORY, notices)
    preds, p_src = _read_table(d, C.PREDICTIONS, notices, required=False)
    trials = _prepare_trials(trials, space)
    history = _prepare_history(history, trials, d / h_src)
    unusable = ()
    if preds is not None:
        preds = usable_predictions(preds, trials, p_src, notices)
        unusable = (C.PREDICTIONS,) if preds is None else ()
    for n in notices:
        log.warning("%s: %s", d, n)
    return StudyResults(d, space, kind, trials, history, preds,
                 {"trials": t_src, "history": h_src, "predictions": p_src if preds is not None else ""}, notices,
                 unusable)


def _as_numbers(df: pd.DataFrame, columns: list[str]) -> None:
    """The numeric ``columns`` of ``df`` as numbers, in place; one it lacks reads as NaN, except the
    noise scale's, which exist only where it was measured (the report tells the two apart)."""
    for c in columns:
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce")
        elif not c.startswith("gns_"):
            df[c] = float("nan")


def _prepare_trials(t: pd.DataFrame, space: dict) -> pd.DataFrame:
    t = t.copy()
    fixed = space.get("fixed") or {}
    for k in MAIN_AXES:  # a main axis the study fixed is a column only when it is an axis
        if k not in t.columns:
            t[k] = fixed.get(k)
    _as_numbers(t, ["batch_size", "seed", *C.numeric(C.TRIAL_COLUMNS)])
    if "stopped_early" not in t.columns:
        t["stopped_early"] = False
    t["stopped_early"] = t["stopped_early"].astype("boolean").fillna(False).astype(bool)
    t["status"] = t["status"].fillna("").astype(str)
    return t.reset_index(drop=True)


def _prepare_history(h: pd.DataFrame, trials: pd.DataFrame, src: Path) -> pd.DataFrame:
    h = h.copy()
    if len(h) and "epoch_end" not in h.columns:
        raise StudyError(f"report: {src}: no column 'epoch_end' (every evaluation row says whether it ends an epoch)")
    if "epoch_end" not in h.columns:  # an empty history (no trial reported) is written without it
        h["epoch_end"] = pd.Series(dtype=bool)
    h["epoch_end"] = h["epoch_end"].astype("boolean").fillna(False).astype(bool)
    _as_numbers(h, C.numeric(C.EVAL_COLUMNS))
    # the axes come from trials (the one place a trial's config is recorded)
    axes = [c for c in trials.columns if c in (*MAIN_AXES, "seed", "stage")]
    h = h.drop(columns=[c for c in axes if c in h.columns])
    if len(trials):
        h = h.merge(trials[["trial_id", *axes]], on="trial_id", how="left")
    h = h.dropna(subset=["epoch"]).drop_duplicates(["trial_id", "epoch"], keep="last")
    return h.sort_values(["trial_id", "epoch"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- predictions

def _ids(ids) -> str:
    ids = sorted(map(str, ids))
    return ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")


def _trial_problem(g: pd.DataFrame, n_test) -> str:
    """Why one trial's predictions cannot take part in a paired test, or ""."""
    dup = int(g["row"].duplicated().sum())
    if dup:
        return f"{dup} duplicated test row{'s' if dup > 1 else ''} ({len(g)} rows for {len(g) - dup} test rows)"
    p, y = g["prob_pos"], g["label"]
    bad = int((g["row"].isna() | ~y.isin([0, 1]) | ~((p >= 0) & (p <= 1))).sum())
    if bad:
        return f"{bad} of {len(g)} rows without a 0/1 label or a probability"
    if n_test is not None and n_test == n_test and len(g) != int(n_test):
        return (f"{len(g)} of {int(n_test)} test rows" if len(g) < n_test
                else f"{len(g)} rows for n_test = {int(n_test)}")
    return ""


def usable_predictions(p: pd.DataFrame, trials: pd.DataFrame, src: str, notices: list[str]) -> pd.DataFrame | None:
    """The predictions a paired test can rest on: trials of this study, each covering exactly the
    test rows (and labels) the other trials have. Appends one notice per thing left out; None when
    nothing is left."""
    p = p.copy()
    for c in C.numeric(C.PREDICTION_COLUMNS):
        p[c] = pd.to_numeric(p[c], errors="coerce")
    if not len(p):
        notices.append(f"{src} holds no rows: paired tests not run.")
        return None
    known = set(trials["trial_id"])
    stray = set(p["trial_id"]) - known
    if stray == set(p["trial_id"]):
        notices.append(f"{src} names no trial of this study (it holds {_ids(stray)}): paired tests not run.")
        return None
    if stray:
        notices.append(f"{src} holds rows of {len(stray)} trial id(s) not in the trials table ({_ids(stray)}): "
                       f"those rows are not used.")
        p = p[p["trial_id"].isin(known)]
    n_test = dict(zip(trials["trial_id"], trials["n_test"]))
    groups = {t: g for t, g in p.groupby("trial_id", sort=False)}
    left_out = {t: why for t, g in groups.items() if (why := _trial_problem(g, n_test.get(t)))}
    good = {t: g for t, g in groups.items() if t not in left_out}
    # every trial scores the same test rows: the row set most trials share is the test set
    sets = Counter(frozenset(g["row"]) for g in good.values()).most_common(2)
    if len(sets) > 1 and sets[0][1] == sets[1][1]:
        notices.append(f"{src}: the trials' predictions cover different test rows and no set is shared by most "
                       f"trials: paired tests not run.")
        return None
    if sets:
        ref = sets[0][0]
        for t, g in good.items():
            if frozenset(g["row"]) != ref:
                left_out[t] = (f"rows that are not the other trials' test rows ({len(ref - set(g['row']))} of "
                               f"their {len(ref)} missing)")
        good = {t: g for t, g in good.items() if t not in left_out}
    if len(good) > 1:  # one label per test row: a trial that disagrees with the majority scored other data
        lab = pd.concat(good.values()).pivot(index="row", columns="trial_id", values="label")
        top = lab.mode(axis=1)[0]
        agree = lab.eq(top, axis=0)
        if (agree.sum(axis=1) * 2 <= lab.shape[1]).any():
            notices.append(f"{src}: the trials' labels disagree on some test rows with no majority: paired tests "
                           f"not run.")
            return None
        for t in lab.columns[~agree.all(axis=0).to_numpy()]:
            k = int((~agree[t]).sum())
            left_out[t] = f"labels that disagree with the other trials' on {k} of {len(lab)} test rows"
    for t, why in left_out.items():
        notices.append(f"{src}: the predictions of trial {t} hold {why}: that trial is left out of the paired "
                       f"tests (its comparisons use the unpaired rule).")
    keep = [t for t in groups if t not in left_out]
    done = set(trials.loc[trials["test_acc"].notna(), "trial_id"])
    absent = sorted(done - set(groups))
    if keep and absent:
        notices.append(f"{src} has no predictions of {len(absent)} trial(s) with a test result ({_ids(absent)}): "
                       f"their comparisons use the unpaired rule.")
    if not keep:
        notices.append(f"{src}: no trial's predictions are usable: paired tests not run.")
        return None
    return p[p["trial_id"].isin(keep)].reset_index(drop=True)
