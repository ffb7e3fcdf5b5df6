"""Type checks for recipe values against the config dataclasses' annotations.

A TOML value of the wrong type (``steps = "10"``, ``roots = 5``, ``device = 0``) must be a one-line
ConfigError naming the key, not a TypeError deep in the trainer or a silently wrong run, so every
field's value is checked against its annotation before the dataclass is built. One convenience:
a string where a list of strings is expected is taken as a one-item list (``roots = "photos"``
means one folder, never the letters of its name).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Mapping

from ..errors import ConfigError


def _describe(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        return "true or false"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if kind is str:
        return "a string"
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is tuple:
        return f"a list of {len(args)} {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    return getattr(kind, "__name__", str(kind))


def _matches(value: Any, kind: Any) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any or (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
        return True  # built (and checked) by its own table
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    return True


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # evaluates the string annotations: slow, so once per class


def checked_values(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``data`` with lists turned into tuples, after checking each value against ``cls``'s field
    annotation; ConfigError ``{where}.{key} is {value!r}; expected ...`` for the first mismatch."""
    hints = _hints(cls)
    out = {}
    for key, value in data.items():
        kind = hints.get(key, Any)
        if isinstance(value, str) and typing.get_origin(kind) is tuple and typing.get_args(kind)[1:] == (Ellipsis,) \
                and typing.get_args(kind)[0] is str:
            value = [value]  # one folder given as a string
        if not _matches(value, kind):
            raise ConfigError(f"{where}.{key} is {value!r}; expected {_describe(kind)}")
        if any(isinstance(v, str) and "\0" in v for v in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"{where}.{key} is {value!r}; a NUL character is never part of a name or path")
        out[key] = tuple(value) if isinstance(value, list) else value
    return out
