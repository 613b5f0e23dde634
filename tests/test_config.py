"""The study schema (tune_study.config): the committed JSON Schema, the shipped study files, seeds
in range, the new keys (repeat, evals_per_epoch) and one-line errors keyed by pydantic's location.
No Ray, no training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tune_study import config, grid
from tune_study.config import (
    TRAIN_DEFAULTS,
    DataConfig,
    Study,
    TrainConfig,
    data_config,
    load_space,
    resolve_config,
    study_schema,
    validate_study,
)
from tune_study.errors import StudyError
from tune_study.study_sections import EarlyStopping, Repeat, Resources

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
SCHEMA = SPACES / "study.schema.json"
STUDY_FILES = sorted(SPACES.glob("*.yaml"))
BASE = "name: bad\naxes:\n  model: [tiny-bert]\n  batch_size: [8]\n"


def _kind(doc: dict) -> str:
    return "search" if "num_samples" in doc or "search_seed" in doc else "grid"


def _load(tmp_path, body, kind="grid"):
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    return load_space(f, kind=kind)


# ----------------------------------------------------------------------------- schema and files

def test_committed_schema_is_the_generated_one(capsys):
    assert config.main(["--schema"]) == 0
    assert SCHEMA.read_text() == capsys.readouterr().out   # rerun the command after changing a model
    assert json.loads(SCHEMA.read_text()) == study_schema()


def test_every_field_is_documented():
    for model in (TrainConfig, DataConfig, Study, EarlyStopping, Resources, Repeat):
        for name, field in model.model_fields.items():
            assert field.description and len(field.description) > 10, f"{model.__name__}.{name}"
    props = study_schema()["$defs"]["TrainConfig"]["properties"]
    assert set(props) == set(TRAIN_DEFAULTS) and all(p.get("description") for p in props.values())


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.name)
def test_shipped_study_files_validate(path, hub_models_available):
    assert len(STUDY_FILES) >= 6
    assert path.read_text().splitlines()[0] == "# yaml-language-server: $schema=study.schema.json"
    doc = yaml.safe_load(path.read_text())
    study = load_space(path, kind=_kind(doc))
    assert study.name == path.stem and study.fixed["evals_per_epoch"] >= 1
    assert isinstance(validate_study(doc, _kind(doc), path), Study)


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.name)
def test_shipped_study_files_match_the_json_schema(path):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    assert not [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]


def test_json_schema_rejects_what_the_models_reject():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(study_schema())
    for bad in ({"axes": {"lr": []}}, {"axes": {"colour": [1]}}, {"axes": {"lr": [1e-3]}, "fixed": {"lr": "fast"}},
                {"axes": {"lr": [1e-3]}, "fixed": {"seed": -1}}, {"axes": {"lr": [1e-3]}, "repeat": {"top": 1}},
                {"axes": {"lr": {"normal": [0, 1]}}}, {"fixed": {}}):
        assert list(validator.iter_errors(bad)), bad


# ----------------------------------------------------------------------------- seeds (issue I)

@pytest.mark.parametrize("body, kind, key, value", [
    (BASE + "fixed: {seed: -1}\n", "grid", "fixed.seed", "-1"),
    (BASE + "fixed: {seed: 4294967296}\n", "grid", "fixed.seed", "4294967296"),
    (BASE + "  seed: [0, 1, -5]\n", "grid", "axes.seed", "-5"),
    (BASE + "  seed: {choice: [0, 4294967296]}\n", "search", "axes.seed", "4294967296"),
    (BASE + "  seed: {int: [0, 4294967296]}\n", "search", "axes.seed", "4294967296"),
    (BASE + "repeat: {top: 2, seeds: [1, -1]}\n", "grid", "repeat.seeds.1", "-1"),
    (BASE + "fixed: {data: {split_seed: -3}}\n", "grid", "fixed.data.split_seed", "-3"),
    (BASE + "search_seed: 4294967296\n", "search", "search_seed", "4294967296"),
])
def test_seed_out_of_range_is_rejected_up_front(tmp_path, body, kind, key, value):
    with pytest.raises(StudyError) as e:
        _load(tmp_path, body, kind)
    msg = str(e.value)
    assert msg == f"{tmp_path / 'bad.yaml'}: key '{key}': expected an integer in [0, 2**32), got {value}"
    assert e.value.key == key


def test_seed_range_ends_are_accepted(tmp_path):
    study = _load(tmp_path, BASE + "  seed: [0, 4294967295]\nrepeat: {top: 1, seeds: [0, 4294967295]}\n"
                               "fixed: {data: {split_seed: 4294967295}}\n")
    assert study.axes["seed"] == [0, 2**32 - 1] and study.repeat.seeds == [0, 2**32 - 1]
    assert resolve_config({"seed": 2**32 - 1}).seed == 2**32 - 1
    with pytest.raises(StudyError, match=r"^seed: expected an integer in \[0, 2\*\*32\), got -1$"):
        resolve_config({"seed": -1})
    with pytest.raises(StudyError, match=r"^data.split_seed: .* got 4294967296$"):
        data_config({"split_seed": 2**32})


def test_seed_out_of_range_exits_2_before_any_write(tmp_path, capsys):
    f = tmp_path / "study.yaml"
    f.write_text(BASE + "fixed: {seed: -1, epochs: 1}\n")
    assert grid.main(["--space", str(f), "--results-dir", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {f}: key 'fixed.seed': expected an integer in [0, 2**32), got -1"
    assert not (tmp_path / "res").exists()


# ----------------------------------------------------------------------------- new keys

def test_evals_per_epoch():
    assert TRAIN_DEFAULTS["evals_per_epoch"] == 1 and resolve_config({}).evals_per_epoch == 1
    assert resolve_config({"evals_per_epoch": 4}).evals_per_epoch == 4
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(StudyError, match=r"^evals_per_epoch: expected an integer >= 1"):
            resolve_config({"evals_per_epoch": bad})


def test_evals_per_epoch_in_a_study(tmp_path):
    assert _load(tmp_path, BASE + "fixed: {evals_per_epoch: 3}\n").fixed["evals_per_epoch"] == 3
    axis = _load(tmp_path, BASE + "  evals_per_epoch: [1, 2]\n")
    assert axis.axes["evals_per_epoch"] == [1, 2] and "evals_per_epoch" not in axis.fixed


def test_repeat(tmp_path):
    assert _load(tmp_path, BASE).repeat is None
    assert _load(tmp_path, BASE + "repeat: {top: 2, seeds: [1, 2, 3]}\n").repeat == Repeat(top=2, seeds=[1, 2, 3])
    for body, key, words in [("repeat: {top: 0, seeds: [1]}\n", "repeat.top", "expected an integer >= 1, got 0"),
                             ("repeat: {top: 1, seeds: []}\n", "repeat.seeds", "expected a non-empty list, got []"),
                             ("repeat: {top: 1, seeds: 3}\n", "repeat.seeds", "expected a list, got 3"),
                             ("repeat: {top: 1}\n", "repeat.seeds", "required key missing"),
                             ("repeat: {top: 1, seeds: [1], by: val}\n", "repeat.by", "unknown key (known: seeds, top)"),
                             ("repeat: 3\n", "repeat", "expected a mapping, got 3")]:
        with pytest.raises(StudyError) as e:
            _load(tmp_path, BASE + body)
        assert str(e.value) == f"{tmp_path / 'bad.yaml'}: key '{key}': {words}"


# ----------------------------------------------------------------------------- the loaded study

def test_load_space_shape(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("axes: {model: [tiny-bert], batch_size: [8, 16]}\nfixed: {lr: 1, data: {max_examples: 100}}\n")
    study = load_space(f)
    assert isinstance(study, Study) and (study.kind, study.path) == ("grid", str(f))
    assert study.name == "s" and study.description == ""
    # fixed: the file's own settings (types as written) + data and evals_per_epoch filled in
    assert study.fixed == {"lr": 1, "evals_per_epoch": 1, "data": {**TRAIN_DEFAULTS["data"], "max_examples": 100}}
    assert study.early_stopping == EarlyStopping(grace_period=1, reduction_factor=2)
    assert study.resources == Resources(cpus_per_trial="auto", gpus_per_trial="auto", max_concurrent_trials="auto",
                                        gpu_fraction=None)
    assert (study.max_failures, study.checkpoints_to_keep, study.storage_path) == (2, 2, None)
    assert study.tracking.mlflow is None   # no MLflow unless the file asks
    assert study.grid_size() == 2 and study.max_epochs() == TRAIN_DEFAULTS["epochs"]
    # the record of the study as run: every setting, a grid's without the search-only keys
    assert set(study.settings()) == {"name", "description", "axes", "fixed", "early_stopping", "resources",
                                     "max_failures", "checkpoints_to_keep", "keep_when_finished", "storage_path",
                                     "repeat", "tracking"}
    assert study.settings()["early_stopping"] == {"grace_period": 1, "reduction_factor": 2}
    search = load_space(f, kind="search")
    assert (search.kind, search.num_samples, search.search_seed) == ("search", 8, 0)
    assert {"num_samples", "search_seed"} <= set(search.settings())


def test_max_epochs_is_the_epochs_axis_top(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("axes: {model: [tiny-bert], epochs: [2, 7, 3]}\nfixed: {lr: 1}\n")
    assert load_space(f).max_epochs() == 7
    f.write_text("axes: {model: [tiny-bert]}\nfixed: {epochs: 4}\n")
    assert load_space(f).max_epochs() == 4


def test_train_defaults_are_the_documented_ones():
    assert {k: v for k, v in TRAIN_DEFAULTS.items() if k != "data"} == {
        "model": "minilm", "batch_size": 16, "micro_batch_size": "auto", "lr": 5e-5, "epochs": 5,
        "scheduler": "constant", "warmup_ratio": 0.0, "weight_decay": 0.0, "lr_scaling": "none",
        "lr_base_batch": None, "beta2_scaling": "none", "max_len": 128, "seed": 0,
        "precision": "auto", "max_grad_norm": None, "eval_batch_size": 64, "threads": None, "device": "auto",
        "compile": False, "evals_per_epoch": 1, "noise_scale": True}
    assert TRAIN_DEFAULTS["data"] == {"source": "bundled", "path": None, "hub_id": "stanfordnlp/imdb",
                                      "text_column": "text", "label_column": "label", "max_examples": None,
                                      "split_seed": 0, "truncation": "head"}


@pytest.mark.parametrize("body, key, msg", [
    ("fixed: {data: {sorce: file}}\n", "fixed.data.sorce",
     "unknown key (known: source, path, hub_id, text_column, label_column, max_examples, split_seed, truncation)"),
    ("fixed: {data: {source: file}}\n", "fixed.data.path", "source 'file' needs a path"),
    ("fixed: {data: {truncation: middle}}\n", "fixed.data.truncation",
     "unknown truncation 'middle' (known: head, tail, head_tail)"),
    ("fixed: {lr: 1e-5}\n", "fixed.lr", "expected a number > 0, got '1e-5'"),   # YAML 1.1 reads 1e-5 as text
    ("fixed: {micro_batch_size: 16}\n", "fixed.micro_batch_size", "16 is larger than the effective batch_size 8"),
    ("early_stopping: {grace_period: 0}\n", "early_stopping.grace_period", "expected an integer >= 1, got 0"),
    ("resources: {max_concurrent_trials: 0}\n", "resources.max_concurrent_trials",
     "expected 'auto' or an integer >= 1, got 0"),
    ("resources: {gpu_fraction: {64: 2}}\n", "resources.gpu_fraction",
     "expected {max effective batch: fraction in (0, 1], default: fraction}, got {64: 2}"),
    ("num_samples: 4\n", "num_samples", "unknown key (known: axes, checkpoints_to_keep, description, "
     "early_stopping, fixed, keep_when_finished, max_failures, name, repeat, resources, storage_path, tracking)"),
])
def test_errors_are_keyed_by_location(tmp_path, body, key, msg):
    with pytest.raises(StudyError) as e:
        _load(tmp_path, BASE + body)
    assert str(e.value) == f"{tmp_path / 'bad.yaml'}: key '{key}': {msg}" and e.value.key == key


def test_missing_axes_says_what_they_look_like(tmp_path):
    with pytest.raises(StudyError, match="key 'axes': required key missing; expected a non-empty mapping"):
        _load(tmp_path, "name: x\n")


def test_train_cli_is_built_from_the_config_models():
    """Every TrainConfig / DataConfig field is a flag of ``python -m tune_study.train`` with the
    field's own choices; a value the model rejects is the model's one-line error (exit 2)."""
    import typing

    from tune_study import train as train_cli

    p, train_keys, data_keys = train_cli.parser()
    assert set(train_keys) == set(TrainConfig.model_fields) - {"data"} and set(data_keys) == set(DataConfig.model_fields)
    actions = {a.dest: a for a in p._actions}   # (argparse has no public listing of its actions)
    for model in (TrainConfig, DataConfig):
        for name, field in model.model_fields.items():
            if name == "data":
                continue
            ann = field.annotation
            ann = typing.get_args(ann)[0] if typing.get_origin(ann) is typing.Annotated else ann
            if typing.get_origin(ann) is typing.Literal:
                assert actions[name].metavar == "{" + ",".join(str(v) for v in typing.get_args(ann)) + "}", name
    args = p.parse_args(["--lr", "5e-5", "--micro-batch-size", "auto", "--no-noise-scale", "--batch-size", "16"])
    assert (args.lr, args.micro_batch_size, args.noise_scale, args.batch_size) == (5e-5, "auto", False, 16)
    assert "model" not in vars(args)                                   # a flag not given is absent
    assert vars(p.parse_args(["--max-grad-norm", "null"]))["max_grad_norm"] is None   # "no clipping", kept


def test_train_cli_bad_value_is_one_line(capsys):
    from tune_study import train as train_cli

    assert train_cli.main(["--model", "tiny-bert", "--lr", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lr" in err[0], err
