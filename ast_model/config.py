"""The one config loader: ``params.yaml`` sections into typed, strict dataclasses.

Every stage reads only its own sections through :func:`load_section`. A key the dataclass does not
declare, or a value of the wrong type, is an error that names the file, the dotted key and the problem,
so a typo in ``params.yaml`` never silently falls back to a default.

One convention for every section: the dataclass declares the keys and their types; cross-field value
checks live in the dataclass's own ``problems(section) -> list[str]`` method (each line naming its dotted
key under ``section``), which the loader calls. Every problem of a section is reported together
(:class:`ConfigError` keeps them as a list); :func:`check_section` returns them with a best-effort config
so that a stage can add its run-time checks (shards, world size) and list everything in one message.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A params file or section that does not match its typed config.

    Attributes:
        problems: one line per problem, each naming its dotted key (``train_p1.phases[0].lr``), without
            the file; a message with several lines is split into several problems.
        source: the params file the problems are in ("" when unknown).
    """

    def __init__(self, problems: str | Sequence[str], *, source: str = "") -> None:
        lines = problems.splitlines() if isinstance(problems, str) else [str(p) for p in problems]
        self.problems = [line for line in lines if line.strip()] or [str(problems)]
        self.source = str(source)
        prefix = f"{self.source}: " if self.source else ""
        super().__init__("\n".join(f"{prefix}{p}" for p in self.problems))


class _Failed(Exception):
    """A value that could not be built; its problems are already recorded (internal to the loader)."""


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
        ConfigError: listing every unknown key, every value of the wrong type and every missing required
            key of the section together (not just the first), each by its dotted key; ``source`` names
            the file.
    """
    cfg, problems, source = _load(cls, params, name, source)
    if problems or cfg is None:
        raise ConfigError(problems or [f"{name}: cannot be built"], source=source)
    return cfg


def check_section(
    cls: type[T], params: Mapping[str, Any] | str | Path, name: str, *, source: str = ""
) -> tuple[T | None, list[str]]:
    """Like :func:`load_section`, but returns the problems instead of raising, with a best-effort config.

    A key with a problem keeps its default, so the caller can still run its value checks on the rest and
    report everything in one go. The config is None only when a required key is missing or unusable.

    Returns:
        ``(config or None, problems)``; the problems carry no file name (the caller knows it).
    """
    cfg, problems, _ = _load(cls, params, name, source)
    return cfg, problems


def _load(
    cls: type[T], params: Mapping[str, Any] | str | Path, name: str, source: str
) -> tuple[T | None, list[str], str]:
    if isinstance(params, (str, Path)):
        source = str(params)
        params = read_params(params)
    raw = params.get(name, {})
    if raw is None:
        raw = {}
    problems: list[str] = []
    try:
        cfg = _build(cls, raw, name, problems)
    except _Failed:
        cfg = None
    if cfg is not None:
        problems += section_problems(cfg, name)
    return cfg, problems, source


def section_problems(cfg: Any, section: str) -> list[str]:
    """The value checks of a built section: its ``problems(section)`` method, if it has one."""
    check = getattr(cfg, "problems", None)
    return list(check(section)) if callable(check) else []


def from_dict(cls: type[T], raw: Any, *, prefix: str = "", where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, strictly (unknown keys and wrong types are errors).

    Raises:
        ConfigError: every problem found (see :func:`load_section`); ``where`` names the file.
    """
    problems: list[str] = []
    try:
        cfg = _build(cls, raw, prefix, problems)
    except _Failed:
        cfg = None
    if cfg is not None:
        problems += section_problems(cfg, prefix or "section")
    if problems or cfg is None:
        raise ConfigError(problems or [f"{prefix or 'section'}: cannot be built"], source=where.rstrip(": "))
    return cfg


def _build(cls: type[T], raw: Any, prefix: str, problems: list[str]) -> T:
    """Build ``cls`` from ``raw``, recording every problem; raises :class:`_Failed` if no object can be made."""
    if not isinstance(raw, Mapping):
        problems.append(f"{prefix or 'section'}: expected a mapping, got {type(raw).__name__}")
        raise _Failed
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in set(raw) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        names = ", ".join(f"{prefix}.{k}" if prefix else k for k in unknown)
        problems.append(f"unknown key(s) {names} (known: {known})")
    kwargs = {}
    failed_required = False
    for key, value in raw.items():
        if key not in fields:
            continue
        dotted = f"{prefix}.{key}" if prefix else str(key)
        try:
            kwargs[key] = _coerce(hints[key], value, dotted, problems)
        except _Failed:  # recorded; the key keeps its default so the other checks can still run
            f = fields[key]
            failed_required |= f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    missing = [
        k
        for k, f in fields.items()
        if k not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for key in missing:
        problems.append(f"{prefix}.{key}: missing (required)" if prefix else f"{key}: missing (required)")
    if missing or failed_required:
        raise _Failed
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a dataclass's own __post_init__ check
        problems.append(f"{prefix}: {exc}")
        raise _Failed from exc


def _coerce(tp: Any, value: Any, dotted: str, problems: list[str]) -> Any:
    """Check ``value`` against type hint ``tp`` (ints are accepted where floats are expected).

    A problem is recorded in ``problems`` and raised as :class:`_Failed`; containers check every item
    before failing, so all bad items are listed.
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a dataclass type (never an instance here)
        return _build(tp, value, dotted, problems)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(option, value, dotted, [])  # a failed option is not a problem yet
            except _Failed:
                continue
        return _fail(problems, f"{dotted}: {value!r} matches none of {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            return _fail(problems, f"{dotted}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return _fail(problems, f"{dotted}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                return _fail(problems, f"{dotted}: expected {len(args)} items, got {len(value)}")
            items = list(zip(args, value, strict=True))
        else:
            item = args[0] if args else Any
            items = [(item, v) for v in value]
        out, failed = [], False
        for i, (item_tp, v) in enumerate(items):
            try:
                out.append(_coerce(item_tp, v, f"{dotted}[{i}]", problems))
            except _Failed:
                failed = True
        if failed:
            raise _Failed
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            return _fail(problems, f"{dotted}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp) or (Any, Any)
        out_map, failed = {}, False
        for k, v in value.items():
            try:
                out_map[k] = _coerce(vt, v, f"{dotted}.{k}", problems)
            except _Failed:
                failed = True
        if failed:
            raise _Failed
        return out_map
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _fail(problems, f"{dotted}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return _fail(problems, f"{dotted}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            return _fail(problems, f"{dotted}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            return _fail(problems, f"{dotted}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        return _fail(problems, f"{dotted}: expected {tp.__name__}, got {value!r}")
    return value


def _fail(problems: list[str], message: str) -> Any:
    problems.append(message)
    raise _Failed


def _type_name(tp: Any) -> str:
    """``int | None`` for a union hint, readable in a message (not ``typing.Optional[int]``)."""
    args = typing.get_args(tp)
    if not args:
        return getattr(tp, "__name__", str(tp))
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(repr(a) for a in args)
    return " | ".join("null" if a is type(None) else _type_name(a) for a in args)
