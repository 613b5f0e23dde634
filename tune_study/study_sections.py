"""The study file's sections besides the training settings: axes, early stopping, resources, repeat,
tracking."""
from __future__ import annotations

import importlib.util
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PlainValidator, ValidationInfo, WithJsonSchema
from pydantic_core import PydanticCustomError

from .validation import PosInt, Seed, Strict, expect, number

DISTRIBUTIONS = ("choice", "int", "loguniform", "uniform")


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
    if kind == "grid" and not isinstance(spec, list):
        raise PydanticCustomError("study", "expected a list of values, got {got}", {"got": repr(spec)})
    if isinstance(spec, dict) and next(iter(spec), None) == "grid_search":
        raise PydanticCustomError("study", "OptunaSearch cannot take grid_search; use {choice: [...]}")
    if isinstance(spec, list):
        values = spec
        if not values:
            raise PydanticCustomError("study", "empty axis: give at least one value")
    else:
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS):
            raise PydanticCustomError("study", f"expected a list or one of {{{', '.join(DISTRIBUTIONS)}: ...}}, "
                                      "got {got}", {"got": repr(spec)})
        dist, values = next(iter(spec.items()))
        if dist != "choice":
            _check_range(dist, values)
            return spec
        if not isinstance(values, list) or not values:
            raise PydanticCustomError("study", "choice needs a non-empty list")
    if kind == "search":  # what Optuna takes as categorical values
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


def discrete_values(spec) -> list | None:
    """The values an axis can take: its list, or a choice's values; None for a range (a distribution)."""
    if isinstance(spec, list):
        return list(spec)
    dist, args = next(iter(spec.items()))
    return list(args) if dist == "choice" else None


def axis_values(spec) -> list:
    """Representative values of an axis: the list, a choice's values, or a range's two ends."""
    values = discrete_values(spec)
    return values if values is not None else list(next(iter(spec.values()))[:2])


def check_axes(v):
    if not isinstance(v, dict) or not v:
        raise PydanticCustomError("study", f"expected {check_axes.what}, got {{got}}", {"got": repr(v)})
    return v


check_axes.what = "a non-empty mapping of axis -> values"


class EarlyStopping(Strict):
    """ASHA on val_acc, its decisions taken in trial order (tune_study/tuning/early_stopping.py): rungs at
    epochs grace_period * reduction_factor**k."""
    grace_period: Annotated[int, Field(ge=1), expect("an integer >= 1")] = Field(
        1, description="epochs every trial runs before the first cut")
    reduction_factor: Annotated[number(gt=1), expect("a number > 1")] = Field(
        2, description="at each rung a trial goes on only if it is in the best 1/reduction_factor of the "
        "trials there (itself and those created before it; ties by val loss, then trial order)")


def to_early_stopping(v):
    if v is False or v is None or v in ("off", "none"):
        return None
    if v is True or v == "asha":
        v = {}
    if isinstance(v, dict):
        return EarlyStopping.model_validate(v)
    raise PydanticCustomError("study", "expected off or a mapping, got {got}", {"got": repr(v)})


Count = Annotated[Literal["auto"] | number(ge=0), expect("'auto' or a number >= 0")]
GPU_FRACTION_SCHEMA = {"type": "object", "description": "max effective batch -> fraction of a GPU",
                       "additionalProperties": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}}


class Resources(Strict):
    """What each trial gets, and how many run at once."""
    cpus_per_trial: Count = Field("auto", description="auto: the CPUs split evenly over the concurrent trials")
    gpus_per_trial: Count = Field("auto", description="auto: 1 on a GPU machine (unless gpu_fraction packs "
                                  "trials), 0 on a CPU one")
    max_concurrent_trials: Annotated[Literal["auto"] | PosInt, expect("'auto' or an integer >= 1")] = Field(
        "auto", description="auto: one trial per core (CPU) or per GPU share")
    gpu_fraction: Annotated[
        dict[int | Literal["default"], number(gt=0, le=1)] | None,
        expect("{max effective batch: fraction in (0, 1], default: fraction}"),
        WithJsonSchema(GPU_FRACTION_SCHEMA)] = Field(
        None, description="pack small trials onto one GPU: {64: 0.25, 256: 0.5, default: 1} gives a trial "
        "with effective batch <= 64 a quarter of a GPU (memory capped to match), <= 256 half, any larger one "
        "a whole GPU")


class Repeat(Strict):
    """Rerun the study's best configs with more seeds, to tell their differences from seed noise."""
    top: Annotated[int, Field(ge=1), expect("an integer >= 1")] = Field(
        description="how many of the best configs (by best val acc) to rerun")
    seeds: Annotated[list[Seed], Field(min_length=1)] = Field(
        description="the seeds each of them is rerun with, each in [0, 2**32)")


# A URI names its scheme (sqlite:///..., http://..., file:///..., databricks); a bare path is refused
# because MLflow would read it as its deprecated file store, not as a SQLite database.
TRACKING_URI = re.compile(r"^(auto|databricks|[A-Za-z][A-Za-z0-9+.-]*://.*)$")


def _mlflow_installed(uri):
    """Refused before the study folder is written, not when its first trial starts."""
    if uri is not None and importlib.util.find_spec("mlflow") is None:
        raise PydanticCustomError("study", "needs the mlflow package: pip install -e '.[mlflow]'")
    return uri


class Tracking(Strict):
    """Where the study's runs are also recorded (one MLflow run per trial); needs the mlflow extra."""
    mlflow: Annotated[
        Annotated[str, Field(pattern=TRACKING_URI.pattern)] | None,
        expect("'auto' or an MLflow tracking URI such as sqlite:///results/mlflow.db"),
        AfterValidator(_mlflow_installed)] = Field(
        None, description="an MLflow tracking URI (sqlite:///path/mlflow.db keeps it offline, "
        "http://host:5000 a tracking server) or auto: sqlite:///<study folder>/mlflow.db; null: no MLflow. "
        "pip install -e '.[mlflow]'")
