"""params.yaml as the pipeline reads it: the per-task profiles, overrides, and one check of the whole file.

The embedded default trains three tasks (rain, raindrop, haze) with one shared training profile, ``train``,
and a ``tasks`` section that says, per task, which dataset it trains on and which keys of the profile (and
of ``evaluate``) differ::

    tasks:
      rain:     {dataset: embedded_rain}
      raindrop: {dataset: embedded_raindrop, train: {phases: [{patch_size: 64, ...}]}}

:func:`task_params` resolves a task into an ordinary params mapping (``train`` = the shared profile with the
task's keys merged in, ``experiment`` = the task name, ``dataset`` = the task's dataset), so the stages and
their checks read a task exactly like any other profile. DVC's ``foreach`` over ``tasks`` gives each task its
own train / evaluate / register stages whose params are ``train`` and ``tasks.<task>``: a change to one
task's keys reruns that task only.

:func:`check_params` runs every section's typed check at once (the Prefect flow calls it before any work);
:func:`apply_overrides` and :func:`write_overrides` set dotted keys (``tasks.rain.train.phases[0].steps``) the
way ``dvc exp run -S`` does, keeping the file's comments.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ast_model.config import check_section, read_params
from pipelines.errors import PreflightError

__all__ = [
    "TaskConfig",
    "apply_overrides",
    "check_params",
    "check_profile_and_section",
    "load_profile",
    "load_tasks",
    "read_params",
    "stage_params",
    "task_params",
    "write_overrides",
]

TASKS = "tasks"
# Checked by the table stages themselves (pipelines/tables.py), not here: importing that module would make it
# a code dep of every stage that reads params (and a change to a table rerun the training).
TABLES = "tables"


@dataclass(frozen=True)
class TaskConfig:
    """One entry of the ``tasks`` section.

    Attributes:
        dataset: the ``data.datasets`` key it trains and is scored on.
        train: keys of the shared training profile that differ for this task (merged over it: mappings
            key by key, lists and values replaced whole).
        evaluate: keys of the ``evaluate`` section that differ for this task.
    """

    dataset: str
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)

    def problems(self, section: str) -> list[str]:
        """Keys the task may not set (the task name is the experiment; the dataset is set above)."""
        return [
            f"{section}.train.{key}: set by the task (remove it here)"
            for key in ("experiment", "dataset")
            if key in self.train
        ]


def load_profile(params: Mapping[str, Any], profile: str, *, source: str = "") -> tuple[Any, Any, list[str]]:
    """A training profile: the library's :class:`~ast_model.train.config.TrainConfig` and, from its ``launch``
    key, the pipeline's :class:`~pipelines.launch.LaunchConfig` (how workers start is not the library's
    business). Best effort, like :func:`ast_model.config.check_section`.

    Returns:
        ``(TrainConfig or None, LaunchConfig or None, problems)``.
    """
    from ast_model.train.config import TrainConfig
    from pipelines.launch import LaunchConfig

    raw = params.get(profile) or {}
    if not isinstance(raw, Mapping):
        return None, None, [f"{profile}: expected a mapping, got {type(raw).__name__}"]
    raw = dict(raw)
    launch_raw = raw.pop("launch", None) or {}
    train, problems = check_section(TrainConfig, {profile: raw}, profile, source=source)
    key = f"{profile}.launch"
    launch, found = check_section(LaunchConfig, {key: launch_raw}, key, source=source)
    return train, launch, problems + found


def load_tasks(params: Mapping[str, Any], *, source: str = "") -> tuple[dict[str, TaskConfig], list[str]]:
    """The ``tasks`` section, strictly: ``(name -> TaskConfig, problems)``; unusable entries are left out."""
    raw = params.get(TASKS) or {}
    if not isinstance(raw, Mapping):
        return {}, [f"{TASKS}: expected a mapping of task name -> {{dataset, train, evaluate}}"]
    tasks, problems = {}, []
    for name in raw:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", str(name)):
            problems.append(f"{TASKS}.{name}: a task name is a folder name: letters, digits, '-', '_'")
            continue
        cfg, found = check_section(TaskConfig, raw, str(name), source=source)
        problems += [
            f"{TASKS}.{line}"
            if not line.startswith("unknown key")
            else line.replace("unknown key(s) ", f"unknown key(s) {TASKS}.")
            for line in found
        ]
        if cfg is not None:
            tasks[str(name)] = cfg
    datasets = (params.get("data") or {}).get("datasets")
    for name, task in tasks.items():
        if isinstance(datasets, Mapping) and task.dataset not in datasets:  # (no data section: nothing to check)
            problems.append(
                f"{TASKS}.{name}.dataset={task.dataset!r} is not in data.datasets "
                f"({', '.join(map(str, datasets)) or 'none'})"
            )
    return tasks, problems


def _merge(base: Any, over: Any) -> Any:
    """``over`` merged into ``base``: mappings key by key (recursively), anything else replaced."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def task_params(
    params: Mapping[str, Any], task: str, *, profile: str = "train", section: str = "evaluate", source: str = ""
) -> dict[str, Any]:
    """``params`` with the task resolved: ``params[profile]`` and ``params[section]`` become the task's.

    Args:
        params: the parsed params file.
        task: a key of ``tasks``.
        profile: the shared training profile the task's ``train`` keys are merged over.
        section: the evaluation section the task's ``evaluate`` keys are merged over.
        source: the params file, for messages.

    Returns:
        A new mapping; ``[profile]`` has ``experiment`` = ``task`` and the task's ``dataset``.

    Raises:
        PreflightError: no such task, or a bad ``tasks`` entry.
    """
    tasks, problems = load_tasks(params, source=source)
    if task not in (params.get(TASKS) or {}):
        raise PreflightError(
            f"no task {task!r} in {TASKS} (tasks: {', '.join(map(str, tasks)) or 'none'})", source=source
        )
    if problems or task not in tasks:
        raise PreflightError(problems, source=source, section=f"{TASKS}.{task}")
    return _resolve(params, task, tasks[task], profile=profile, section=section)


def _resolve(
    params: Mapping[str, Any], task: str, cfg: TaskConfig, *, profile: str = "train", section: str = "evaluate"
) -> dict[str, Any]:
    """The merge itself (no checks): see :func:`task_params`."""
    out = dict(params)
    out[profile] = {**_merge(params.get(profile) or {}, cfg.train), "experiment": task, "dataset": cfg.dataset}
    out[section] = _merge(params.get(section) or {}, cfg.evaluate)
    return out


def stage_params(
    path: str | Path, task: str | None, *, profile: str = "train", section: str = "evaluate"
) -> dict[str, Any]:
    """What a stage reads: the params file, with ``task`` resolved into ``profile`` and ``section`` if given.

    Raises:
        ConfigError: the file cannot be read. PreflightError: no such task, or a bad ``tasks`` entry.
    """
    params = read_params(path)
    return task_params(params, task, profile=profile, section=section, source=str(path)) if task else params


_KEY = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+|\[\d+\])*")
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _path(key: str) -> list[str | int]:
    """``"train.phases[0].lr"`` (or ``train.phases.0.lr``) -> ``["train", "phases", 0, "lr"]``."""
    if not _KEY.fullmatch(key):
        raise PreflightError(f"override key {key!r}: use dotted keys such as train.phases[0].lr")
    return [int(index) if index else int(name) if name.isdigit() else name for name, index in _STEP.findall(key)]


def _set(tree: Any, steps: list[str | int], value: Any, key: str) -> None:
    node = tree
    for depth, step in enumerate(steps[:-1]):
        nxt = steps[depth + 1]
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                raise PreflightError(f"override {key}: no item [{step}] there")
            node = node[step]
            continue
        if not isinstance(node, dict):
            raise PreflightError(f"override {key}: {step!r} is not inside a mapping")
        if step not in node or node[step] is None:
            node[step] = [] if isinstance(nxt, int) else {}
        node = node[step]
    last = steps[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise PreflightError(f"override {key}: no item [{last}] there")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise PreflightError(f"override {key}: {last!r} is not inside a mapping")


def apply_overrides(params: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` with each dotted key of ``overrides`` set to its value.

    Keys may create new entries (a new key is then caught by :func:`check_params` if no section declares it).

    Raises:
        PreflightError: a key that cannot be applied (an index past the end of a list, a key under a value).
    """
    out = copy.deepcopy(dict(params))
    for key, value in overrides.items():
        _set(out, _path(str(key)), copy.deepcopy(value), str(key))
    return out


def check_params(params: Mapping[str, Any], source: str = "params.yaml") -> None:
    """Every section of a params file checked with its typed config; every problem reported at once.

    Sections: ``model``, ``data``, ``prepare``, ``shard``, the training profiles (``train`` and ``train_*``),
    ``evaluate*``, ``register*``, and ``tasks`` (each task's resolved profile is checked as a profile, so
    a bad key in ``tasks.rain.train`` is named there). An unknown top-level section is a problem too.

    Raises:
        PreflightError: the problems, one per line, each naming its key.
    """
    from ast_model.data.config import DataConfig, PrepareConfig, ShardConfig
    from ast_model.eval.config import EvaluateConfig
    from ast_model.train.config import ModelConfig, TrainConfig
    from pipelines.gate import RegisterConfig

    fixed: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "prepare": PrepareConfig, "shard": ShardConfig}
    families: dict[str, type] = {"train": TrainConfig, "evaluate": EvaluateConfig, "register": RegisterConfig}
    problems: list[str] = []
    for name in params:
        cls = fixed.get(name) or next(
            (c for prefix, c in families.items() if name == prefix or name.startswith(f"{prefix}_")), None
        )
        if name in (TASKS, TABLES):
            continue
        if cls is None:
            known = sorted([*fixed, *families, TASKS, TABLES])
            problems.append(f"unknown section {name!r} (known: {', '.join(known)}, and train_*/evaluate_*/register_*)")
            continue
        found = (
            load_profile(params, name, source=source)[2]
            if cls is TrainConfig
            else check_section(cls, params, name, source=source)[1]
        )
        problems += [line for line in found if line not in problems]
    tasks, found = load_tasks(params, source=source)
    problems += found
    for task in tasks:
        resolved = _resolve(params, task, tasks[task])
        label = f"{TASKS}.{task}.train"
        for line in load_profile(resolved, "train", source=source)[2]:
            line = _relabel(line, "train", label, tasks[task].train)
            if line not in problems:
                problems.append(line)
        for line in check_section(EvaluateConfig, resolved, "evaluate", source=source)[1]:
            line = _relabel(line, "evaluate", f"{TASKS}.{task}.evaluate", tasks[task].evaluate)
            if line not in problems:
                problems.append(line)
    if problems:
        raise PreflightError(problems, source=source)


def _relabel(line: str, section: str, label: str, overridden: Mapping[str, Any]) -> str:
    """Name a problem under ``tasks.<t>.<section>`` when its key is one the task sets."""

    def swap(match: re.Match) -> str:
        return f"{label}.{match.group(1)}" if match.group(1) in overridden else match.group(0)

    return re.sub(rf"(?<![\w.]){section}\.(\w+)", swap, line)


def _yaml11_float(representer: Any, value: float) -> Any:
    """A float the way PyYAML (YAML 1.1, which reads params.yaml) reads it back.

    ``1.0e-06``, not ``1e-06`` (which YAML 1.1 reads as a string).
    """
    text = repr(value).lower()
    if value != value or value in (float("inf"), float("-inf")):
        text = ".nan" if value != value else ("-.inf" if value < 0 else ".inf")
    elif "e" in text and "." not in text:
        text = text.replace("e", ".0e", 1)
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def write_overrides(path: str | Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Apply dotted-key overrides to a params file in place, keeping its comments and layout.

    The whole result is checked first (:func:`check_params`); the file is replaced atomically (temp file
    in the same folder, then rename), so a bad override leaves it untouched.

    Returns:
        The new params (plain mapping).

    Raises:
        PreflightError: a key that cannot be applied, or a result with problems (all listed).
    """
    from ruamel.yaml import YAML  # round-trip YAML (a DVC dependency): comments survive

    from ast_model.data.files import atomic_writer

    path = Path(path)
    new = apply_overrides(read_params(path), overrides)
    check_params(new, str(path))
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.representer.add_representer(float, _yaml11_float)
    doc = yaml.load(path.read_text(encoding="utf-8"))
    for key, value in overrides.items():
        _set(doc, _path(str(key)), copy.deepcopy(value), str(key))
    with atomic_writer(path, "w") as fh:
        yaml.dump(doc, fh)
    return new


def check_profile_and_section(
    params: str | Path | Mapping[str, Any],
    profile: str,
    section: str,
    section_type: type,
    *,
    purpose: str,
    source: str = "",
) -> tuple[Any, Any, list[str]]:
    """Read a training profile and one stage section, collecting every problem instead of stopping.

    Args:
        params: the params file, or its parsed (task-resolved) mapping.
        profile: the training section whose experiment the stage works on (``train``, ``train_spad``, ...).
        section: the stage's own section (``evaluate``, ``register``, ...).
        section_type: its typed config class (its ``problems(section)`` method adds the value checks).
        purpose: what the profile is for, in the "no training section" message (``the model to evaluate``).
        source: the params file's name when ``params`` is a mapping.

    Returns:
        ``(TrainConfig or None, section config or None, problems)``; the training config is None when the
        profile is missing or invalid.
    """

    raw = params if isinstance(params, Mapping) else read_params(params)
    source = source or ("" if isinstance(params, Mapping) else str(params))
    problems: list[str] = []
    train = None
    if profile not in raw:
        problems.append(f"no training section {profile!r} ({purpose})")
    else:
        train, _, found = load_profile(raw, profile, source=source)
        problems += found
    cfg, found = check_section(section_type, raw, section, source=source)
    problems += found  # the loader ran the section's own value checks (its problems() method)
    return train, cfg, problems
