"""pydantic's validation errors in offload's words: the key path, what is wrong, and a fix.

No message of the validation library reaches a user as it is. Each error is translated by its
*type* (``int_type``, ``greater_than_equal``, ``literal_error`` …), with what the model says
about the key (its bounds, whether it is a duration), so a key added to the model later is
explained as well as the old ones without a word written for it. Our own validators raise
:class:`~offload.config.base.Invalid`, which carries its message and fix through unchanged.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable
from typing import Any

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from offload.config.base import Invalid, metadata_of, show
from offload.config.units import format_duration, parse_byte_rate, parse_duration, parse_size
from offload.errors import Issue

Loc = tuple[int | str, ...]

_TYPES: dict[str, tuple[str, str]] = {
    # pydantic error type: (what the key takes, how to write it)
    "int": ("a whole number", "write a whole number without quotes, like 4"),
    "float": ("a number", "write a number without quotes, like 2.5"),
    "bool": ("true or false", "write true or false, without quotes"),
    "string": ("text", "write it in quotes, like \"text\""),
    "list": ("a list", "write a list, like [\"a\", \"b\"], or a single value"),
    "table": ("a table", "write a table: { key = \"value\" }, or a [section] of its own"),
}
_TYPE_OF_ERROR = {
    "int_type": "int", "int_parsing": "int", "int_from_float": "int", "int_parsing_size": "int",
    "float_type": "float", "float_parsing": "float", "finite_number": "float",
    "bool_type": "bool", "bool_parsing": "bool",
    "string_type": "string", "string_unicode": "string",
    "tuple_type": "list", "list_type": "list", "set_type": "list", "frozen_set_type": "list",
    "iterable_type": "list",
    "dict_type": "table", "mapping_type": "table", "model_type": "table",
    "model_attributes_type": "table", "dataclass_type": "table",
}
_BOUNDS = {"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le",
           "less_than": "lt"}


def path_of(loc: Loc) -> str:
    """Render a location as a key path: ``frontends[0].certificates[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The model a field of this type holds (itself, in a list, optional or annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    return {field.alias or name: field for name, field in model.model_fields.items()}


def walk(root: type[BaseModel], loc: Loc) -> tuple[Loc, type[BaseModel] | None, FieldInfo | None]:
    """Follow ``loc`` through the models from ``root``: the location without pydantic's union
    tags, the model that holds its last key, and that key's field (None past the models)."""
    model: type[BaseModel] | None = root
    owner: type[BaseModel] | None = root
    field: FieldInfo | None = None
    clean: list[int | str] = []
    for index, part in enumerate(loc):
        if isinstance(part, int):
            clean.append(part)
            continue
        last = index == len(loc) - 1
        if model is None:
            clean.append(part)  # a table's own key (a header name): past the models
            continue
        found = _fields(model).get(part)
        if found is None and not last:
            continue  # a union member's tag, not a key the user wrote
        clean.append(part)
        owner, field = model, found
        model = _model_in(found.annotation) if found is not None else None
    return tuple(clean), owner, field


def known_keys(model: type[BaseModel]) -> list[str]:
    return list(_fields(model))


def did_you_mean(key: str, model: type[BaseModel]) -> str:
    """Suggest the closest valid key of ``model`` for an unknown ``key``."""
    known = known_keys(model)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"did you mean \"{close[0]}\"?"
    return "valid keys here: " + ", ".join(known)


def _parser_of(field: FieldInfo | None) -> Callable[..., object] | None:
    for item in metadata_of(field):
        func = getattr(item, "func", None)
        if func in (parse_duration, parse_size, parse_byte_rate):
            return typing.cast(Callable[..., object], func)
    return None


def _range(field: FieldInfo | None, ctx: dict[str, Any]) -> tuple[str, str]:
    """What a bounded key must be and how to write it: ("from 1 to 1024", "write a whole
    number from 1 to 1024"), ("more than 0s", "write a duration longer than 0s")."""
    bounds: dict[str, float] = {}
    for item in metadata_of(field):
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(item, annotated_types.BaseMetadata) and hasattr(item, name):
                bounds[name] = getattr(item, name)
    bounds.update({name: ctx[name] for name in ("ge", "gt", "le", "lt") if name in ctx})
    parser = _parser_of(field)
    noun = ("a duration" if parser is parse_duration else "a size" if parser is parse_size
            else "a rate" if parser is parse_byte_rate
            else "a whole number" if field is not None and field.annotation in (int, int | None)
            else "a number")

    def fmt(value: float) -> str:
        if parser is parse_duration:
            return format_duration(value) if value else "0s"
        if parser is parse_size:
            return f"{int(value)} bytes"
        return f"{value:g}" if isinstance(value, float) else str(value)

    more, less = (("longer", "shorter") if parser is parse_duration
                  else ("larger", "smaller") if parser is parse_size else ("above", "below"))
    if "ge" in bounds and "le" in bounds:
        rule = f"from {fmt(bounds['ge'])} to {fmt(bounds['le'])}"
        return rule, f"write {noun} {rule}"
    low = ((f"at least {fmt(bounds['ge'])}", f"of at least {fmt(bounds['ge'])}") if "ge" in bounds
           else (f"more than {fmt(bounds['gt'])}", f"{more} than {fmt(bounds['gt'])}")
           if "gt" in bounds else None)
    high = ((f"at most {fmt(bounds['le'])}", f"of at most {fmt(bounds['le'])}") if "le" in bounds
            else (f"less than {fmt(bounds['lt'])}", f"{less} than {fmt(bounds['lt'])}")
            if "lt" in bounds else None)
    parts = [part for part in (low, high) if part is not None]
    return (" and ".join(rule for rule, _ in parts),
            f"write {noun} " + " and ".join(how for _, how in parts))


def _choices(expected: str) -> str:
    """pydantic's "'tcp' or 'http'" as TOML values: "tcp", "http"."""
    values = re.findall(r"'((?:[^'\\]|\\.)*)'", expected)
    return ", ".join(show(value) for value in values) if values else expected


def _own_words(error: object, fallback: str, key: str) -> tuple[str, str]:
    """A validator's own message: ours carries its fix; another's is split at "; "."""
    if isinstance(error, Invalid):
        return error.what, error.fix
    text = str(error) if error is not None else fallback
    what, _, fix = text.removeprefix("Value error, ").partition("; ")
    return what, fix or f"see docs/config.md for the values {key} takes"


def translate(kind: str, value: object, ctx: dict[str, Any], field: FieldInfo | None,
              key: str) -> tuple[str, str]:
    """(what is wrong, the fix) for one pydantic error of type ``kind`` at ``key``."""
    if kind == "missing":
        return "required key is missing", "add this key"
    if kind in ("value_error", "assertion_error"):
        return _own_words(ctx.get("error"), "", key)
    if kind in _TYPE_OF_ERROR:
        noun, fix = _TYPES[_TYPE_OF_ERROR[kind]]
        return f"{show(value)} is not {noun}", fix
    if kind in _BOUNDS:
        rule, fix = _range(field, ctx)
        return f"{show(value)} is out of range: it must be {rule}", fix
    if kind in ("literal_error", "enum"):
        choices = _choices(str(ctx.get("expected", "")))
        return f"{show(value)} is not one of the accepted values", f"use one of: {choices}"
    if kind == "too_short":
        need = int(ctx.get("min_length", 1))
        what = "it is empty" if not value else f"it has {ctx.get('actual_length')} entries"
        return what, ("give at least one entry" if need == 1 else f"give at least {need} entries")
    if kind == "too_long":
        limit = ctx.get("max_length")
        return (f"it has {ctx.get('actual_length')} entries, more than {limit}",
                f"give at most {limit}")
    if kind == "string_too_short":
        need = int(ctx.get("min_length", 1))
        if need == 1:
            return "it is empty", "write a value; an empty string is not allowed here"
        return f"{show(value)} is shorter than {need} characters", f"write at least {need} characters"
    if kind == "string_too_long":
        limit = ctx.get("max_length")
        shown = show(value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "…")
        return f"{shown} is longer than {limit} characters", f"shorten it to {limit} characters or fewer"
    if kind == "string_pattern_mismatch":
        return (f"{show(value)} is not in the accepted form",
                f"write a value that matches {ctx.get('pattern')}")
    return f"{show(value)} is not accepted here", f"see docs/config.md for the values {key} takes"


def issues_from_validation(error: ValidationError, root: type[BaseModel],
                           prefix: Loc = ()) -> list[Issue]:
    """Translate a model's validation errors into :class:`Issue` objects at their key paths."""
    issues: list[Issue] = []
    details = error.errors(include_url=False)
    item_errors = {tuple(d["loc"][:-1]) for d in details if len(d["loc"]) > 1}
    item_errors |= {tuple(d["loc"][:i]) for d in details for i in range(len(d["loc"]))
                    if isinstance(d["loc"][i], int)}
    seen: set[str] = set()
    for detail in details:
        kind = detail["type"]
        if kind == "too_short" and tuple(detail["loc"]) in item_errors:
            continue  # every entry was invalid and is reported itself; "too short" would mislead
        loc, owner, field = walk(root, tuple(detail["loc"]))
        where = path_of(prefix + loc)
        if where in seen and len(loc) != len(detail["loc"]):
            continue  # one error per member of a union: the first says it
        seen.add(where)
        key = next((str(part) for part in reversed(loc) if isinstance(part, str)), "this key")
        if kind == "extra_forbidden":
            hint = did_you_mean(key, owner) if owner is not None else "remove this key"
            issues.append(Issue(where, "unknown key", hint))
            continue
        what, fix = translate(kind, detail.get("input"), dict(detail.get("ctx") or {}), field, key)
        issues.append(Issue(where, what, fix))
    return issues
