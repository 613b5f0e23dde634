"""The report package: loading (read-only), outputs and figures, the CLI, and one end-to-end run on the
real smoke study. The verdicts themselves are in test_report_verdicts.py; broken exports in
test_report_inputs.py."""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from report_synth import N_TEST, correct_mask, curve, flat_history, line, preds, trial, write_study

from tune_study.report import build_report, load_study, main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "results" / "example" / "default"
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
FIGS = ("fig_curves_epoch.png", "fig_curves_steps.png", "fig_curves_samples.png", "fig_reliability.png",
        "fig_test_vs_batch.png", "fig_expected_max.png")


def _digest(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def _full_study(root: Path, name="full") -> Path:
    """A new-format grid: 2 batch sizes x 2 schedulers, 4 evaluations per epoch, predictions."""
    ts, h, ps = [], [], []
    for i, (b, s) in enumerate([(8, "constant"), (32, "constant"), (8, "linear"), (32, "linear")]):
        tid = f"t{i}"
        right = 120 - 10 * i
        ts.append(trial(tid, batch_size=b, scheduler=s, best_val_acc=0.9 - 0.02 * i, test_acc=right / N_TEST,
                        evals_per_epoch=4,
                        test_reliability="[[0.5, 0.6, 50, 0.55, 0.6], [0.9, 1.0, 100, 0.95, 0.9]]"))
        h += curve(tid, b, lambda st, i=i: 0.55 + 0.3 * min(1, st / 300) - 0.01 * i, evals_per_epoch=4)
        ps.append(preds(tid, correct_mask(right), 0.8))
    return write_study(root, name, ts, h, ps)


def test_load_study_reads_tables_and_space(tmp_path):
    d = _full_study(tmp_path)
    st = load_study(d)
    assert st.kind == "grid" and st.space["name"] == "full" and st.axes == ["model", "batch_size", "scheduler"]
    assert len(st.trials) == 4 and set(st.trials["stage"]) == {"grid"}
    assert len(st.history) == 4 * 12 and st.history["epoch_end"].sum() == 4 * 3
    assert st.history["epoch"].iloc[0] == pytest.approx(0.25)
    assert len(st.predictions) == 4 * N_TEST and st.sources["predictions"] == "predictions.parquet"
    # history gets each trial's axes from trials
    assert set(st.history.loc[st.history["trial_id"] == "t3", "scheduler"]) == {"linear"}
    import tune_study

    assert tune_study.load_study is load_study


def test_load_study_bad_paths(tmp_path):
    from tune_study.errors import StudyError

    with pytest.raises(StudyError, match="no study folder"):
        load_study(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match="not a study folder"):
        load_study(tmp_path / "empty")


def test_report_writes_only_its_own_outputs(tmp_path):
    d = _full_study(tmp_path)
    before = _digest(d)
    out = build_report(d, log=lambda *_: None)
    assert out == d / "report.md"
    after = _digest(d)
    assert {k: v for k, v in after.items() if k in before} == before  # exports untouched
    new = set(after) - set(before)
    assert new == {"report.md", "test_table.csv", "expected_max_table.csv", *FIGS}
    for png in d.glob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 300_000
    table = pd.read_csv(d / "test_table.csv")
    assert len(table) == 4 and {"collapsed", "collapse_kind", "test_acc_lo", "test_acc_hi"} <= set(table.columns)
    # Wilson 95% interval of 120/150
    assert table.loc[table["trial_id"] == "t0", "test_acc_lo"].iloc[0] == pytest.approx(0.7286, abs=1e-3)
    em = pd.read_csv(d / "expected_max_table.csv")
    # 4 val scores .9 .88 .86 .84: E[max of 1] = mean = 0.87; E[max of 4] = sum v_i ((i/4)^4 - ((i-1)/4)^4)
    v = [0.84, 0.86, 0.88, 0.90]
    want4 = sum(x * ((i / 4) ** 4 - ((i - 1) / 4) ** 4) for i, x in enumerate(v, 1))
    assert em["expected_best_val_acc"].tolist() == pytest.approx([0.87, em.iloc[1, 2], em.iloc[2, 2], round(want4, 4)])
    text = out.read_text()
    assert "(c) Batch size, or just fewer optimizer steps?" in text
    assert "at matched optimizer steps 114 steps" in line(text, "minilm · constant, batch 8 vs 32")


def test_committed_example_is_current_and_measured(tmp_path):
    # the example is what today's report makes of its exports: rebuilt from them, the text is the same
    d = tmp_path / "default"
    shutil.copytree(EXAMPLE, d)
    text = build_report(d, log=lambda *_: None).read_text()
    assert text == (EXAMPLE / "report.md").read_text()
    s = load_study(EXAMPLE)
    assert s.predictions is not None and set(s.predictions["trial_id"]) == set(s.trials["trial_id"])
    assert (s.trials["evals_per_epoch"] == 4).all() and (~s.history["epoch_end"]).any()
    # every (c) comparison rests on measured points at both matched steps and matched samples
    c = line(text, "**(c)")
    assert "Of 6 adjacent-batch comparisons, 6 have both matched points measured" in c
    assert "not comparable (" not in text and "step 0" not in text
    assert "exact McNemar" in line(text, "runner-up by val") and "Holm-adjusted" in line(text, "**(b)")


def test_search_study(tmp_path):
    ts = [trial(f"s{i}", batch_size=b, lr=lr, best_val_acc=0.7 + 0.03 * i)
          for i, (b, lr) in enumerate([(8, 1e-5), (32, 3e-5), (8, 1e-4), (32, 2e-5)])]
    d = write_study(tmp_path, "search", ts, axes=("model", "batch_size", "lr"), kind="search")
    text = build_report(d, log=lambda *_: None).read_text()
    assert load_study(d).kind == "search"
    assert "Not assessed for a search study" in line(text, "**(c)")
    assert "**minilm · constant · b32 · lr=2e-05**" in line(text, "**Best config**")
    assert (d / "fig_expected_max.png").exists() and "Tuning budget" in text
    # val .70 .73 .76 .79: E[max of 1] = .745; E[max of 2] = .76375; E[max of 4] = .7785
    assert "| minilm (4 trials) | 0.745 | 0.764 | 0.779 |" in text
    assert (d / "fig_search_history.png").exists()
    assert "| minilm | minilm · constant · b32 · lr=2e-05 | 0.790 |" in text  # best per model, by val


def test_interrupted_and_empty_study(tmp_path):
    ts = [trial("a"), trial("b", batch_size=32, status="RUNNING", epochs_run=1),
          trial("c", batch_size=128, status="PENDING", epochs_run=0, best_val_acc=math.nan, test_acc=math.nan)]
    text = build_report(write_study(tmp_path, "int", ts, flat_history(ts[:2])), log=lambda *_: None,
                        figures=False).read_text()
    assert "**Interrupted study**: 2 trial(s) never finished (PENDING, RUNNING)" in text
    # a study whose trials have not reported yet: the report says so (an unexported study is refused:
    # test_report_inputs.py)
    ts = [trial(f"p{i}", batch_size=b, status="PENDING", epochs_run=0, best_val_acc=math.nan, test_acc=math.nan)
          for i, b in enumerate((8, 32))]
    text = build_report(write_study(tmp_path, "empty", ts, []), log=lambda *_: None).read_text()
    assert "nothing to report" in text and "2 trial(s) never finished (PENDING)" in text


def test_cli(tmp_path, capsys):
    r = subprocess.run([sys.executable, "-m", "tune_study.report", str(tmp_path / "nope")], capture_output=True,
                       text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert main([str(tmp_path)]) == 2
    assert "not a study folder" in capsys.readouterr().err
    d = _full_study(tmp_path)
    assert main([str(d), "--no-figures"]) == 0 and (d / "report.md").exists() and not list(d.glob("*.png"))


# ----------------------------------------------------------------------------- the real smoke study (Ray)

def test_report_from_smoke_study(smoke_study):
    rc, d = smoke_study
    assert rc == 0
    before = _digest(d)
    text = build_report(d, log=lambda *_: None).read_text()
    assert all(_digest(d)[k] == v for k, v in before.items())
    assert "## Findings" in text and "**(c)" in text
    assert "What could not be used" not in text  # the exports as written are used in full
    assert len(pd.read_csv(d / "test_table.csv")) == len(pd.read_parquet(d / "trials.parquet"))
