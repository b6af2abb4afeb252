"""The one config loader: strict typed sections with errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from ast_model.config import ConfigError, load_section, read_params


@dataclass
class Inner:
    size: int = 1
    rate: float = 0.5


@dataclass
class Section:
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    sizes: list[int] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    limit: int | None = None


def test_valid_section_with_defaults_and_nesting(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("sec:\n  name: y\n  mode: b\n  sizes: [1, 2]\n  inner: {rate: 2}\n")
    cfg = load_section(Section, p, "sec")
    assert cfg == Section(name="y", mode="b", sizes=[1, 2], inner=Inner(size=1, rate=2.0), limit=None)
    assert isinstance(cfg.inner.rate, float)  # ints are accepted where floats are expected
    assert load_section(Section, p, "absent") == Section()


@pytest.mark.parametrize(
    "body,message",
    [
        ("sec: {nmae: y}", r"unknown key\(s\) sec.nmae"),
        ("sec: {inner: {sise: 2}}", r"unknown key\(s\) sec.inner.sise"),
        ("sec: {sizes: [1, two]}", r"sec.sizes\[1\]: expected an integer"),
        ("sec: {mode: c}", r"sec.mode: 'c' is not one of \['a', 'b'\]"),
        ("sec: {limit: 1.5}", r"sec.limit: 1.5 matches none"),
        ("sec: {inner: 3}", r"sec.inner: expected a mapping"),
    ],
)
def test_bad_sections_name_file_and_key(tmp_path: Path, body: str, message: str) -> None:
    p = tmp_path / "params.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError, match=message) as err:
        load_section(Section, p, "sec")
    assert str(p) in str(err.value)


def test_unreadable_or_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read params file"):
        read_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        read_params(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        read_params(bad)


def test_repository_params_file_parses() -> None:
    params = read_params(Path(__file__).resolve().parents[2] / "params.yaml")
    assert {"model", "data", "prepare", "shard", "train"} <= set(params)
