"""Bad input, table-driven: every case is one line on stderr naming the culprit, exit code 2, and
no earlier results touched. None of these starts Ray: input is checked before anything runs."""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch

from tune_study import grid, train
from tune_study.errors import StudyError
from tune_study.training.checkpoints import load_state
from tune_study.tuning import ray_setup

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"

BASE = """name: {name}
axes:
  model: [tiny-bert]
  batch_size: [8]
  scheduler: [constant]
fixed:
  epochs: 1
  max_len: 32
  data: {data}
"""


def study(tmp, body=None, data="{source: bundled, max_examples: 100}", name="bad"):
    f = tmp / "study.yaml"
    f.write_text(body if body is not None else BASE.format(name=name, data=data))
    return f


def csv(tmp, text):
    f = tmp / "reviews.csv"
    f.write_text(text)
    return f


def grid_case(make, expect):
    """make(tmp) -> argv for grid.main; expect: substrings of the error line."""
    return ("grid", make, expect)


def _many(rows, n=12):
    return "".join(rows[i % len(rows)] for i in range(n))


CASES = {
    "malformed yaml": grid_case(lambda t: ["--space", str(study(t, "axes: [model: {{\n"))],
                                ["study.yaml", "malformed YAML"]),
    "unknown key": grid_case(lambda t: ["--space", str(study(t, BASE.format(name="bad", data="{}") + "colour: blue\n"))],
                             ["study.yaml", "'colour'", "unknown key"]),
    "wrong type": grid_case(lambda t: ["--space", str(study(t, BASE.format(name="bad", data="{}").replace("epochs: 1", "epochs: one")))],
                            ["study.yaml", "'fixed.epochs'", "'one'"]),
    "unknown model": grid_case(lambda t: ["--space", str(study(t, BASE.format(name="bad", data="{}").replace("tiny-bert", "gpt-17")))],
                               ["'axes.model'", "gpt-17", "minilm"]),
    "missing data file": grid_case(lambda t: ["--space", str(study(t, data=f"{{source: file, path: {t}/nope.csv}}"))],
                                   ["nope.csv", "not found"]),
    "csv without text column": grid_case(
        lambda t: ["--space", str(study(t, data=f"{{source: file, path: {csv(t, 'review,label' + chr(10) + _many(['good,1' + chr(10), 'bad,0' + chr(10)]))}}}"))],
        ["reviews.csv", "'text'", "data.text_column"]),
    "non-binary labels": grid_case(
        lambda t: ["--space", str(study(t, data=f"{{source: file, path: {csv(t, 'text,label' + chr(10) + _many(['good,1' + chr(10), 'bad,0' + chr(10), 'meh,2' + chr(10)]))}}}"))],
        ["reviews.csv", "binary", "2"]),
    "single-class dataset": grid_case(
        lambda t: ["--space", str(study(t, data=f"{{source: file, path: {csv(t, 'text,label' + chr(10) + ''.join(f'review {i},pos' + chr(10) for i in range(30)))}}}"))],
        ["reviews.csv", "one class"]),
    "empty dataset": grid_case(lambda t: ["--space", str(study(t, data=f"{{source: file, path: {csv(t, 'text,label' + chr(10))}}}"))],
                               ["reviews.csv", "empty"]),
    "batch size <= 0": grid_case(lambda t: ["--space", str(study(t, BASE.format(name="bad", data="{}").replace("[8]", "[0]")))],
                                 ["'axes.batch_size'", "0"]),
    "micro-batch > effective batch": grid_case(
        lambda t: ["--space", str(study(t, BASE.format(name="bad", data="{}").replace("epochs: 1", "epochs: 1\n  micro_batch_size: 16")))],
        ["'fixed.micro_batch_size'", "16", "batch_size 8"]),
    "lr <= 0": grid_case(lambda t: ["--space", str(study(t, BASE.format(name="bad", data="{}").replace("epochs: 1", "epochs: 1\n  lr: -0.1")))],
                         ["'fixed.lr'", "-0.1"]),
    "epochs 0": grid_case(lambda t: ["--space", str(study(t, BASE.format(name="bad", data="{}").replace("epochs: 1", "epochs: 0")))],
                          ["'fixed.epochs'", "0"]),
    "results dir not writable": grid_case(
        lambda t: ["--space", str(study(t)), "--results-dir", str(_file(t) / "sub")],
        ["--results-dir", "not a directory"]),
    "existing study without --resume": grid_case(
        lambda t: ["--space", str(study(t, name="earlier")), "--results-dir", str(t / "results")],
        ["already exists", "--resume"]),
    "--resume of a missing study": grid_case(
        lambda t: ["--space", str(study(t, name="never_ran")), "--results-dir", str(t / "results"), "--resume"],
        ["--resume", "no study"]),
    "missing study file": grid_case(lambda t: ["--space", str(t / "nope.yaml")], ["nope.yaml", "not found"]),
    "empty axis": grid_case(lambda t: ["--space", str(study(t, BASE.format(name="bad", data="{}").replace("[constant]", "[]")))],
                            ["'axes.scheduler'", "empty"]),
    "unknown scheduler": grid_case(lambda t: ["--space", str(study(t, BASE.format(name="bad", data="{}").replace("[constant]", "[cyclic]")))],
                                   ["'axes.scheduler'", "cyclic"]),
    "unknown data source": grid_case(lambda t: ["--space", str(study(t, data="{source: ftp}"))],
                                     ["'fixed.data.source'", "ftp"]),
    "unknown lr_scaling": grid_case(
        lambda t: ["--space", str(study(t, BASE.format(name="bad", data="{}").replace("[constant]", "[constant]\n  lr_scaling: [none, cube]")))],
        ["'axes.lr_scaling'", "cube", "sqrt"]),
    "lr_base_batch <= 0": grid_case(
        lambda t: ["--space", str(study(t, BASE.format(name="bad", data="{}").replace("epochs: 1", "epochs: 1\n  lr_scaling: sqrt\n  lr_base_batch: -4")))],
        ["'fixed.lr_base_batch'", "-4"]),
    "train: lr_scaling without a base batch": (
        "train", lambda t: ["--model", "tiny-bert", "--batch-size", "8", "--lr-scaling", "sqrt"],
        ["lr_base_batch", "lr_scaling sqrt"]),
    "unknown truncation": grid_case(lambda t: ["--space", str(study(t, data="{source: bundled, truncation: middle}"))],
                                    ["study.yaml", "'fixed.data.truncation'", "middle", "head_tail"]),
    "train: unknown truncation": ("train", lambda t: ["--model", "tiny-bert", "--truncation", "middle"],
                                  ["data.truncation", "middle", "head_tail"]),
    "train: lr <= 0": ("train", lambda t: ["--model", "tiny-bert", "--batch-size", "8", "--lr", "0"], ["lr", "0"]),
    "train: unknown model": ("train", lambda t: ["--model", "bert-huge"], ["bert-huge", "tiny-bert"]),
}


def _file(t):
    f = t / "a_file"
    f.write_text("not a folder")
    return f


def _snapshot(root: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tmp_path, capsys):
    tool, make, expect = CASES[case]
    earlier = tmp_path / "results" / "earlier"       # an earlier study's results
    earlier.mkdir(parents=True)
    (earlier / "space.yaml").write_text("name: earlier\n")
    (earlier / "trials.csv").write_text("trial_id,test_acc\na,0.9\n")
    before = _snapshot(tmp_path / "results")
    argv = make(tmp_path)
    if tool == "grid" and "--results-dir" not in argv:
        argv += ["--results-dir", str(tmp_path / "results")]
    rc = (grid.main if tool == "grid" else train.main)(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for s in expect:
        assert s in err, f"{s!r} not in {err!r}"
    assert _snapshot(tmp_path / "results") == before           # nothing earlier touched
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["earlier"]  # nothing new


def test_at_least_15_cases():
    assert len(CASES) >= 15


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/tune_study_pwned"),))


def test_checkpoint_loading_runs_no_code(tmp_path):
    """Checkpoints load with weights_only=True: a pickle that would run code is refused."""
    marker = Path("/tmp/tune_study_pwned")
    marker.unlink(missing_ok=True)
    with open(tmp_path / "state.pt", "wb") as f:
        pickle.dump({"model": _Exploit()}, f)
    with pytest.raises(StudyError, match="corrupt or unreadable"):
        load_state(tmp_path)
    assert not marker.exists()
    torch.save({"model": {}}, tmp_path / "state.pt")
    with pytest.raises(StudyError, match="incomplete"):
        load_state(tmp_path)


def test_exposed_dashboard_warns():
    assert ray_setup.dashboard_warning("127.0.0.1") is None
    w = ray_setup.dashboard_warning("0.0.0.0")
    assert "CVE-2023-48022" in w and "0.0.0.0" in w


@pytest.mark.parametrize("dashboard, warned", [(True, True), (False, False)])
def test_exposed_dashboard_warning_only_when_one_starts(monkeypatch, caplog, dashboard, warned):
    """--dashboard-host 0.0.0.0 warns of an exposed dashboard; with --no-dashboard none starts."""
    import ray

    started = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: started.append(kw))
    ray_setup.init_ray(None, "0.0.0.0", 8265, 1, dashboard=dashboard)
    assert started[-1]["include_dashboard"] is dashboard
    assert ("CVE-2023-48022" in caplog.text) is warned


def test_no_unsafe_torch_load_in_package():
    for f in (ROOT / "tune_study").glob("*.py"):
        for line in f.read_text().splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{f.name}: {line.strip()}"
