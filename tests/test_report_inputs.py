"""Broken exports: the report refuses them (exit 2, one line naming the file, nothing written) or
says plainly, near the top of report.md and on the log, what it could not use. Each case beside its
control, where the same study with sound exports is used in full."""
from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from report_synth import N_TEST, correct_mask, curve, line, preds, trial, write_study

from tune_study.report import build_report, load_study, main

ROOT = Path(__file__).resolve().parents[1]
GARBAGE = bytes(range(256)) * 8
NOTES = "**What could not be used**"
RIGHT = (120, 110, 100)  # test examples right of 150, for b8, b32, b128


def _listing(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(d.rglob("*"))}


def _grid(root: Path, name="g", predictions=True, with_csv=False, edit_preds=None) -> Path:
    """Three batch sizes of one model · scheduler, val .90 .88 .86 (b8 best, b32 runner-up), test
    120 / 110 / 100 of 150 right, per-example predictions; ``edit_preds(list of frames)`` breaks them."""
    ts, ps = [], []
    for i, (b, right) in enumerate(zip((8, 32, 128), RIGHT)):
        ts.append(trial(f"t{i}", batch_size=b, best_val_acc=0.9 - 0.02 * i, test_acc=right / N_TEST))
        ps.append(preds(f"t{i}", correct_mask(right), 0.8))
    if edit_preds is not None:
        ps = edit_preds(ps)
    d = write_study(root, name, ts, None, ps if predictions else None)
    if with_csv:
        for f in d.glob("*.parquet"):
            pd.read_parquet(f).to_csv(f.with_suffix(".csv"), index=False)
    return d


def _refused(d: Path, capsys, *needles) -> str:
    """The CLI refuses ``d`` with exit 2 and one line holding ``needles``; the folder is as it was."""
    before = _listing(d)
    assert main([str(d)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    for n in needles:
        assert n in err, (n, err)
    assert _listing(d) == before  # no report.md, no test_table.csv, no figure
    return err


def _report(d: Path) -> str:
    return build_report(d, log=lambda *_: None, figures=False).read_text()


# ----------------------------------------------------------------------------- refused

def test_missing_trials_export_is_refused(tmp_path, capsys):
    d = _grid(tmp_path)
    (d / "trials.parquet").unlink()
    _refused(d, capsys, str(d / "trials.parquet"), "missing")
    # a study folder that has exported nothing yet (space.yaml only): refused too, not "0 trials"
    e = tmp_path / "fresh"
    e.mkdir()
    shutil.copyfile(d / "space.yaml", e / "space.yaml")
    _refused(e, capsys, "trials.parquet: missing")
    # control: the same folder with its trials is reported
    assert "Trials: 3" in _report(_grid(tmp_path, "ok"))


@pytest.mark.parametrize("table", ["trials", "history"])
def test_unreadable_export_without_twin_is_refused(tmp_path, capsys, table):
    d = _grid(tmp_path)
    (d / f"{table}.parquet").write_bytes(GARBAGE)
    _refused(d, capsys, str(d / f"{table}.parquet"), "cannot be read")


def test_refusal_from_the_command_line(tmp_path):
    d = _grid(tmp_path)
    (d / "trials.parquet").write_bytes(GARBAGE)
    before = _listing(d)
    r = subprocess.run([sys.executable, "-m", "tune_study.report", str(d)], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "trials.parquet: cannot be read" in r.stderr and _listing(d) == before


def test_missing_history_and_missing_columns_are_refused(tmp_path, capsys):
    d = _grid(tmp_path, "nohist")
    (d / "history.parquet").unlink()
    _refused(d, capsys, "history.parquet: missing")
    # a history without epoch_end (a per-epoch export of an older version) is not guessed at
    d = _grid(tmp_path, "noend")
    pd.read_parquet(d / "history.parquet").drop(columns=["epoch_end"]).to_parquet(d / "history.parquet")
    _refused(d, capsys, "history.parquet: no column 'epoch_end'")
    # predictions without prob_pos are not "no predictions"
    d = _grid(tmp_path, "noprob")
    pd.read_parquet(d / "predictions.parquet").drop(columns=["prob_pos"]).to_parquet(d / "predictions.parquet")
    _refused(d, capsys, "predictions.parquet: cannot be read", "'prob_pos'")


def test_unreadable_study_file_is_refused(tmp_path, capsys):
    d = _grid(tmp_path)
    (d / "space.yaml").write_bytes(GARBAGE)
    _refused(d, capsys, "space.yaml: not a text file")


@pytest.mark.parametrize("how", ["rows", "ids"])
def test_csv_and_parquet_that_disagree_are_refused(tmp_path, capsys, how):
    d = _grid(tmp_path, with_csv=True)
    t = pd.read_csv(d / "trials.csv")
    if how == "rows":
        t = t.iloc[:2]
    else:
        t["trial_id"] = t["trial_id"].replace({"t2": "t9"})
    t.to_csv(d / "trials.csv", index=False)
    err = _refused(d, capsys, str(d / "trials.parquet"), "trials.csv", "disagree")
    assert ("3 vs 2 rows" in err) if how == "rows" else ("t2" in err and "t9" in err)
    # control: twins that agree are read, from the Parquet
    assert load_study(_grid(tmp_path, "twins", with_csv=True)).sources["trials"] == "trials.parquet"


# ----------------------------------------------------------------------------- used, and said so

@pytest.mark.parametrize("table", ["trials", "history", "predictions"])
def test_garbage_parquet_beside_csv_is_stated(tmp_path, caplog, table):
    d = _grid(tmp_path, with_csv=True)
    (d / f"{table}.parquet").write_bytes(GARBAGE)
    with caplog.at_level(logging.WARNING, logger="tune_study.report.load"):
        text = _report(d)
    notes = text.split(NOTES, 1)[1].split("\n\n", 1)[0]
    assert f"{table}.parquet could not be read" in notes and f"{table}.csv was used instead" in notes
    assert "cannot be checked" in notes
    assert f"{table}.parquet could not be read" in caplog.text
    assert f"{table}.csv" in line(text, "data from") and f"{table}.parquet" not in line(text, "data from")
    assert text.index(NOTES) < text.index("## Findings")
    # the CSV's data are used in full: paired tests still run
    assert "exact McNemar" in line(text, "runner-up by val")
    # control: sound twins, no notes
    assert NOTES not in _report(_grid(tmp_path, "sound", with_csv=True))


def test_predictions_of_no_trial_of_the_study(tmp_path, caplog):
    def rename(ps):
        return [p.assign(trial_id="other_" + p["trial_id"]) for p in ps]

    with caplog.at_level(logging.WARNING, logger="tune_study.report.load"):
        text = _report(_grid(tmp_path, edit_preds=rename))
    assert "predictions.parquet names no trial of this study" in line(text, "paired tests not run")
    assert "names no trial of this study" in caplog.text
    head = line(text, "Per-example test predictions")
    assert "not usable" in head and "paired tests" not in head
    runner = line(text, "runner-up by val")
    assert "Newcombe" in runner and "McNemar" not in runner
    assert "McNemar" not in text.split("## Rules used")[0]
    # control: the same predictions under the study's trial ids are paired
    ok = _report(_grid(tmp_path, "ok"))
    assert "stored, so configs are compared with paired tests" in line(ok, "Per-example test predictions")
    assert "exact McNemar" in line(ok, "runner-up by val") and NOTES not in ok


def test_predictions_of_other_trials_beside_the_studys_are_left_out(tmp_path):
    def stray(ps):
        return ps + [ps[0].assign(trial_id="elsewhere")]

    d = _grid(tmp_path, edit_preds=stray)
    text = _report(d)
    assert "1 trial id(s) not in the trials table (elsewhere)" in text
    assert "exact McNemar" in line(text, "runner-up by val")
    assert set(load_study(d).predictions["trial_id"]) == {"t0", "t1", "t2"}


def _b8_vs(text: str, b: int) -> str:
    return line(text, f"minilm · constant · b8 0.800 vs minilm · constant · b{b} ")


@pytest.mark.parametrize("damage, notice", [
    (lambda p: p.iloc[:75], "the predictions of trial t1 hold 75 of 150 test rows"),
    (lambda p: pd.concat([p, p.iloc[:10]]), "the predictions of trial t1 hold 10 duplicated test rows"),
    (lambda p: p.assign(row=p["row"] + 1000),
     "the predictions of trial t1 hold rows that are not the other trials' test rows (150 of their 150 missing)"),
    (lambda p: p.assign(label=[1 - y if r < 12 else y for r, y in zip(p["row"], p["label"])]),
     "the predictions of trial t1 hold labels that disagree with the other trials' on 12 of 150 test rows"),
])
def test_one_trials_broken_predictions_leave_it_out_of_paired_tests(tmp_path, caplog, damage, notice):
    def edit(ps):
        return [ps[0], damage(ps[1]), ps[2]]

    d = _grid(tmp_path, edit_preds=edit)
    with caplog.at_level(logging.WARNING, logger="tune_study.report.load"):
        text = _report(d)
    assert notice in text.split(NOTES, 1)[1].split("\n\n", 1)[0] and notice in caplog.text
    assert "left out of the paired tests" in line(text, notice)
    # b32 (t1) is compared unpaired, on its own test accuracy; b8 vs b128 stays paired, on all 150 rows
    assert "Newcombe" in _b8_vs(text, 32) and "McNemar" not in _b8_vs(text, 32)
    assert "Newcombe" in line(text, "runner-up by val")
    assert "exact McNemar on 20 discordant test examples (20 vs 0)" in _b8_vs(text, 128)
    assert "usable for 2 of the 3 trials" in line(text, "Per-example test predictions")
    p = load_study(d).predictions
    assert set(p["trial_id"]) == {"t0", "t2"} and len(p) == 2 * N_TEST
    # control: undamaged, b8 vs b32 is paired (McNemar on the 10 rows b32 gets wrong and b8 right)
    ok = _report(_grid(tmp_path, "ok"))
    assert "exact McNemar on 10 discordant test examples (10 vs 0)" in _b8_vs(ok, 32)


def test_labels_of_two_trials_that_disagree_with_no_majority(tmp_path):
    def two(ps):
        return [ps[0], ps[1].assign(label=1 - ps[1]["label"])]

    text = _report(_grid(tmp_path, edit_preds=two))
    assert "labels disagree on some test rows with no majority: paired tests not run" in text
    assert "McNemar" not in text.split("## Rules used")[0]


# ----------------------------------------------------------------------------- nothing to draw

def test_all_trials_errored_before_any_val_accuracy(tmp_path):
    # trials that errored after logging some steps but before any val result: no curve can be drawn,
    # and a log-scaled steps axis over nothing used to crash the report
    ts = [trial(f"e{i}", batch_size=b, status="ERROR", epochs_run=0, best_epoch=math.nan, best_val_acc=math.nan,
                best_val_loss=math.nan, test_acc=math.nan, test_loss=math.nan) for i, b in enumerate((8, 32))]
    h = [{**r, "val_acc": math.nan, "val_loss": math.nan, "train_loss": math.nan}
         for t in ts for r in curve(t["trial_id"], t["batch_size"], lambda s: 0.5, epochs=1)]
    d = write_study(tmp_path, "err", ts, h)
    text = build_report(d, log=lambda *_: None).read_text()
    assert "**Errored trials**" in text and "nothing to report" in text
    assert not list(d.glob("fig_curves_*.png"))
    # control: one trial with a curve gets its curve figures
    ts[0].update(status="TERMINATED", epochs_run=1, best_val_acc=0.7, test_acc=0.7, test_loss=0.5)
    h = curve("e0", 8, lambda s: 0.7, epochs=1)
    d = write_study(tmp_path, "one", ts, h)
    build_report(d, log=lambda *_: None)
    want = {f"fig_curves_{k}.png" for k in ("epoch", "steps", "samples")}
    assert {p.name for p in d.glob("fig_curves_*.png")} == want
