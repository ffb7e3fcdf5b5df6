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


INT64 = 2**63
FLOAT32_MAX = 3.4028234663852886e38  # torch keeps these numbers as float32 tensors at some point


def _describe(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        return "true or false"
    if kind is int:
        return "an integer (64-bit)"
    if kind is float:
        return "a finite number"
    if kind is str:
        return "a string"
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is tuple:
        return f"a list of {len(args)} {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    return getattr(kind, "__name__", str(kind))


def _finite_float(value: Any) -> bool:
    try:
        return abs(float(value)) <= FLOAT32_MAX
    except OverflowError:  # an integer beyond float range
        return False


def _matches(value: Any, kind: Any) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any or (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
        return True  # built (and checked) by its own table
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and -INT64 <= value < INT64
    if kind is float:  # nan fails the comparison too
        return isinstance(value, (int, float)) and not isinstance(value, bool) and _finite_float(value)
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


def _as_declared(value: Any, kind: Any) -> Any:
    """Integers given for float fields become floats (torch would overflow on a huge Python int);
    lists become tuples."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is float or (origin in (typing.Union, types.UnionType) and float in args and int not in args):
        return float(value) if isinstance(value, int) else value
    if origin is tuple and isinstance(value, (list, tuple)):
        kinds = [args[0]] * len(value) if args[1:] == (Ellipsis,) else list(args)
        return tuple(_as_declared(v, k) for v, k in zip(value, kinds))
    return tuple(value) if isinstance(value, list) else value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


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
            raise ConfigError(f"{where}.{key} is {_show(value)}; expected {_describe(kind)}")
        if any(isinstance(v, str) and "\0" in v for v in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"{where}.{key} is {_show(value)}; a NUL character is never part of a name or path")
        out[key] = _as_declared(value, kind)
    return out
