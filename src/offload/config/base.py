"""What every configuration model shares: frozen, strict about unknown keys, a single value
wherever a list is expected, and value errors that carry offload's own words and a fix.

Kept apart from :mod:`offload.config.model` so that models defined elsewhere (the inspection
rules) get the same behaviour without importing the whole configuration.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator
from pydantic.fields import FieldInfo


class Invalid(ValueError):
    """A value the configuration cannot take: what is wrong with it, and how to write it.

    Raised by the parsers and validators of the models; the loader turns it into an
    :class:`~offload.errors.Issue` at the key it was found at."""

    def __init__(self, what: str, fix: str) -> None:
        self.what = what
        self.fix = fix
        super().__init__(f"{what}; {fix}")


def show(value: object) -> str:
    """A value as it would be written in the TOML file, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {show(item)}" for key, item in value.items()) + " }"
    return str(value)


def form(pattern: str, noun: str, example: str) -> AfterValidator:
    """A text key that must match ``pattern`` (whole), refused in words: "is not {noun}"."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise Invalid(f"{show(value)} is not {noun}", f"write {noun}, like {show(example)}")
        return value

    return AfterValidator(check)


class HttpOnly:
    """Marks a frontend key that only HTTP mode reads (``Annotated[..., HttpOnly()]``).

    Set on a ``mode = "tcp"`` frontend it is an error naming the key; inherited from
    ``[defaults]`` it is left out of TCP frontends. ``unless`` names a key that makes it matter
    in TCP mode too (``request_timeout`` also times the ``redirect_http`` listener)."""

    def __init__(self, unless: str | None = None) -> None:
        self.unless = unless

    def __repr__(self) -> str:
        return f"HttpOnly(unless={self.unless!r})"


def takes_a_list(annotation: object) -> bool:
    """Whether a field of this type holds a list (``tuple[X, ...]``), possibly optional; a
    fixed pair like a status range ``tuple[int, int]`` is one value, not a list."""
    origin = typing.get_origin(annotation)
    if origin is list:
        return True
    if origin is tuple:
        return typing.get_args(annotation)[-1:] == (Ellipsis,)
    if origin is typing.Annotated:
        return takes_a_list(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(takes_a_list(arg) for arg in typing.get_args(annotation))
    return False


def metadata_of(field: FieldInfo | None) -> Iterator[object]:
    """A field's constraints and validators, with those of an optional type's members
    (``Annotated[int, BeforeValidator(parse_size)] | None``)."""
    if field is None:
        return
    yield from field.metadata
    for arg in typing.get_args(field.annotation):
        if typing.get_origin(arg) is typing.Annotated:
            yield from typing.get_args(arg)[1:]


class Model(BaseModel):
    """Frozen, and strict about unknown keys: a misspelled key is an error, never ignored.

    A single value may stand where a list is expected (``bind = ":443"``,
    ``certificates = "certs/"``): it is read as a list of one, for every list key of every
    model, including keys added later."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _single_values_as_lists(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        wrapped = dict(data)
        for name, field in cls.model_fields.items():
            for key in {name, field.alias or name}:
                value = wrapped.get(key)
                if (value is not None and not isinstance(value, list | tuple)
                        and takes_a_list(field.annotation)):
                    wrapped[key] = [value]
        return wrapped
