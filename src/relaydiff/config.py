"""Typed configuration: dataclasses to and from plain dicts, with helpful key errors.

Only the mapping lives here; reading and writing the JSON files is :mod:`relaydiff.io.files`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value that cannot work: ``problem``, then the ``fix`` in config terms (``key``
    names the setting, so that a command can say which of its flags sets it)."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.key, self.problem, self.fix = key, problem, fix


def closest(key: str, valid: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the valid name closest to ``key`` (empty if none)."""
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f"; did you mean {match[0]!r}?" if match else ""


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; nested dataclass fields are built recursively.

    Unknown keys raise ``ValueError`` naming the key, where it was found (``where``: the dotted
    path of ``data``; ``""`` for the top level, whose keys are then named bare) and the closest
    valid key.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ValueError(f"{where or 'config'}: unknown key {key!r}{closest(key, names)} "
                             f"(valid: {', '.join(names)})")
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"{where or 'config'}: {e}") from None


def _options(hint: Any) -> tuple[Any, ...]:
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return typing.get_args(hint) if union else (hint,)


def _matches(hint: Any, value: Any) -> bool:
    """Whether a JSON value fits a field's type hint (ints count as floats, bools as neither)."""
    if len(_options(hint)) > 1:
        return any(_matches(o, value) for o in _options(hint))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(map(_matches, args, value))
        return not args or all(_matches(args[0], v) for v in value)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (dict, hint))
    return True


def _describe(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "an object", type(None): "null"}
    parts = []
    for option in _options(hint):
        origin = typing.get_origin(option)
        if option in names:
            parts.append(names[option])
        elif origin in (tuple, list):
            args = typing.get_args(option)
            fixed = origin is tuple and args[-1:] != (Ellipsis,)
            plural = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
            what = plural.get(args[0], "values") if args else "values"
            parts.append(f"a list of {len(args)} {what}" if fixed else f"a list of {what}")
        elif dataclasses.is_dataclass(option):
            parts.append("an object")
        else:
            parts.append(getattr(option, "__name__", str(option)))
    return " or ".join(dict.fromkeys(parts))


def _convert(hint: Any, value: Any, where: str) -> Any:
    if not _matches(hint, value):
        raise ValueError(f"{where}: expected {_describe(hint)}, got {value!r}")
    options = _options(hint)
    for option in options:
        if dataclasses.is_dataclass(option) and isinstance(value, dict):
            return from_dict(option, value, where)
    if isinstance(value, list) and any(typing.get_origin(o) is tuple for o in options):
        return tuple(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass → plain dict of JSON types (tuples become lists)."""
    return _plain(dataclasses.asdict(obj))
