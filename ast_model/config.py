"""The one config loader: ``params.yaml`` sections into typed, strict dataclasses.

Every stage reads only its own sections through :func:`load_section`. A key the dataclass does not
declare, or a value of the wrong type, is an error that names the file, the dotted key and the problem,
so a typo in ``params.yaml`` never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A params file or section that does not match its typed config."""


def read_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read a YAML params file into a dict.

    Args:
        path: the params file (``params.yaml`` by default).

    Returns:
        The top-level mapping.

    Raises:
        ConfigError: the file is missing, is not valid YAML, or its top level is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read params file ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_section(cls: type[T], params: Mapping[str, Any] | str | Path, name: str, *, source: str = "") -> T:
    """Build the dataclass ``cls`` from section ``name`` of a params mapping or file.

    Args:
        cls: a dataclass type; nested dataclass fields are built recursively.
        params: the parsed params (from :func:`read_params`) or a path to a params file.
        name: the top-level section name (e.g. ``"train"``).
        source: a label for error messages (the file name) when ``params`` is a mapping.

    Returns:
        An instance of ``cls``; keys absent from the section keep the dataclass defaults.

    Raises:
        ConfigError: the section is missing (and ``cls`` has required fields), or holds an unknown key
            or a value of the wrong type. The message names the dotted key.
    """
    if isinstance(params, (str, Path)):
        source = str(params)
        params = read_params(params)
    where = f"{source}: " if source else ""
    raw = params.get(name, {})
    if raw is None:
        raw = {}
    return from_dict(cls, raw, prefix=name, where=where)


def from_dict(cls: type[T], raw: Any, *, prefix: str = "", where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, strictly (unknown keys and wrong types are errors)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}{prefix or 'section'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        names = ", ".join(f"{prefix}.{k}" if prefix else str(k) for k in unknown)
        raise ConfigError(f"{where}unknown key(s) {names} (known: {known})")
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _coerce(hints[key], value, dotted, where)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}{prefix}: {exc}") from exc


def _coerce(tp: Any, value: Any, dotted: str, where: str) -> Any:
    """Check ``value`` against type hint ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=dotted, where=where)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(option, value, dotted, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}{dotted}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}{dotted}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}{dotted}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}{dotted}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{dotted}[{i}]", where) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_coerce(item, v, f"{dotted}[{i}]", where) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}{dotted}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(vt, v, f"{dotted}.{k}", where) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}{dotted}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}{dotted}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}{dotted}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}{dotted}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}{dotted}: expected {tp.__name__}, got {value!r}")
    return value
