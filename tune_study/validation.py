"""Pydantic models -> bad input as one line: ``file: key 'fixed.lr': expected a number > 0, got 'fast'``.

A field states its rule once (``expect("a number > 0")`` beside its type and constraints); the key of
an error comes from pydantic's location of it, never from the message text.
"""
from __future__ import annotations

import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .errors import StudyError

SEED_RANGE = "an integer in [0, 2**32)"   # what numpy and transformers.set_seed take


def says(template: str, what: str | None = None):
    """Any failure of the wrapped type reads ``template`` ({got} = the value): one rule, one message."""
    def check(v, handler):
        try:
            return handler(v)
        except ValidationError:
            raise PydanticCustomError("expected", template, {"got": repr(v)}) from None
    check.what = what   # what a missing key should have been
    return WrapValidator(check)


def expect(what: str):
    return says(f"expected {what}, got {{got}}", what)


def fail(loc: tuple, msg: str, value: Any = None):
    """Raise a validation error at ``loc`` (relative to the model being validated)."""
    raise ValidationError.from_exception_data(
        "study", [InitErrorDetails(type=PydanticCustomError("study", msg), loc=tuple(loc), input=value)])


def none_is_empty(v):
    return {} if v is None else v


class Strict(BaseModel):
    # strict: 8.0 is no batch size, "1e-5" (YAML reads it as a string) no learning rate, true no 1.
    model_config = ConfigDict(strict=True, extra="forbid", validate_default=False)


# Shared field types.
Seed = Annotated[int, Field(ge=0, lt=2**32), expect(SEED_RANGE)]
PosInt = Annotated[int, Field(gt=0)]


def number(**constraints):
    """An int or a finite float under the same bounds; an int stays an int (2 is not rewritten as 2.0)."""
    return Annotated[int, Field(**constraints)] | Annotated[float, Field(allow_inf_nan=False, **constraints)]


# ----------------------------------------------------------------------------- errors -> one line

_TYPE_WORDS = {"model_type": "a mapping", "model_attributes_type": "a mapping", "dict_type": "a mapping",
               "list_type": "a list", "string_type": "a string", "int_type": "an integer",
               "float_type": "a number", "bool_type": "true or false"}


def _sub_model(tp):
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    return next((m for m in map(_sub_model, typing.get_args(tp)) if m is not None), None)


def _sub_model_at(root: type[BaseModel], loc) -> type[BaseModel]:
    """The model that holds the key at ``loc`` (a path of field names from ``root``)."""
    model = root
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = (field and _sub_model(field.annotation)) or model
    return model


def _sub_field(root: type[BaseModel], loc):
    return _sub_model_at(root, loc[:-1]).model_fields.get(loc[-1]) if loc else None


def known(model: type[BaseModel], kind: str | None = None) -> list[str]:
    """A model's keys for "unknown key (known: ...)": in their documented order where the model says
    so (a training config), else sorted; a grid file does not take a search's own keys."""
    keys = list(model.model_fields)
    keys = keys if getattr(model, "documented_order", False) else sorted(keys)
    return [k for k in keys if k not in getattr(model, "search_only", ())] if kind == "grid" else keys


def explain(err: dict, root: type[BaseModel], kind: str | None = None) -> str:
    """The message of one pydantic error: our own rule's words where there is one."""
    t = err["type"]
    if t in ("expected", "study"):
        return err["msg"]
    if t == "extra_forbidden":
        return f"unknown key (known: {', '.join(known(_sub_model_at(root, err['loc'][:-1]), kind))})"
    if t == "missing":
        field = _sub_field(root, err["loc"])
        rules = (getattr(getattr(m, "func", None), "what", None) for m in (field.metadata if field else []))
        what = next((w for w in rules if w), None)
        return f"required key missing; expected {what}" if what else "required key missing"
    if t == "too_short":
        n = err["ctx"]["min_length"]
        return f"expected {'a non-empty list' if n == 1 else f'at least {n} items'}, got {err.get('input')!r}"
    if t in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[t]}, got {err.get('input')!r}"
    return f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {err.get('input')!r}"


def to_study_error(e: ValidationError, root: type[BaseModel], prefix: tuple = (), path=None,
                    kind=None) -> StudyError:
    """The first error as one line: ``file: key 'a.b': message`` for a file, else ``a.b: message``."""
    err = e.errors()[0]
    loc = (*prefix, *err["loc"])
    msg = explain(err, root, kind)
    key = ".".join(map(str, loc))
    if path is not None:
        return StudyError(f"{path}: key '{key}': {msg}", key=key)
    if err["type"] == "extra_forbidden":  # a config dict: "data: unknown key 'x' (known: ...)"
        parent = ".".join(map(str, loc[:-1]))
        msg = f"unknown key '{loc[-1]}' ({msg.removeprefix('unknown key (').removesuffix(')')})"
        return StudyError(f"{parent}: {msg}" if parent else msg, key=key)
    return StudyError(f"{key}: {msg}" if key else msg, key=key or None)
