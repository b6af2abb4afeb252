"""The paper's tables as pipeline outputs: the ``tables`` params section, the paper's numbers, aggregation
over seeds, the ordering verdicts, and the writers of ``reports/tableN.md`` / ``.csv``.

The stages that use it: ``ablation@<variant>`` (:mod:`pipelines.stages.ablation`, one per entry of
``tables.variants``: trains the variant once per seed and writes ``reports/ablation/<variant>.json``) and
``table1`` ... ``table10``, ``figure4`` (:mod:`pipelines.stages.tables`, which aggregate those results, or the
task models for Tables 1-3 and 10). A variant is trained once and shared by every table that lists it
(``variant:`` in ``pipelines/paper_tables.yaml``).

Spread and verdicts. With seeds ``s``, a row's PSNR is printed as ``mean ± spread`` with spread = half the
range over the seeds, ``(max - min) / 2``. A difference between two rows is *beyond the spread* when every
seed of one row is above every seed of the other (their ranges do not overlap); with one seed nothing is
beyond the spread. For the paper's ordering, every pair of rows the paper ranks (by its PSNR) is
``agrees`` (ours beyond the spread, same direction), ``reversed`` (beyond the spread, the other way) or
``undecided``; a table's ordering is *reproduced* when every pair agrees, *not reproduced* when any pair is
reversed, and *undecided* otherwise.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ast_model.data.files import atomic_write_bytes

PAPER_FILE = Path(__file__).resolve().with_name("paper_tables.yaml")
SECTION = "tables"
TABLES = tuple(f"table{i}" for i in range(1, 11)) + ("figure4",)
ABLATION_TABLES = ("table4", "table5", "table6", "table7", "table8", "table9", "figure4")
# The tables scored with a task model of params `tasks` (the others train the ablation variants).
TASK_OF = {"table1": "rain", "table2": "raindrop", "table3": "haze", "table10": "rain"}


@dataclass(frozen=True)
class BudgetConfig:
    """One training budget of the ablation runs (``tables.budgets.<name>``).

    Attributes:
        base: the training profile the budget's keys are merged over (``train``, ``train_spad``, ...).
        train: keys of ``base`` that differ (mappings merge key by key, lists are replaced whole), e.g.
            ``phases`` and ``model_overrides``.
        description: one line for the captions (what a reader needs to judge the numbers).
    """

    base: str = "train"
    train: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class LatencyConfig:
    """Table 9's latency measurement: forward passes of AST-T on a ``1x3xSxS`` input on this machine.

    Attributes:
        size: the input side S.
        repeats: timed passes per variant (after one warm-up), interleaved across the variants.
        threads: torch intra-op threads (null: torch's default).
    """

    size: int = 256
    repeats: int = 3
    threads: int | None = None


@dataclass(frozen=True)
class TablesConfig:
    """The ``tables`` section: which ablation variants exist, how long they train, how many seeds.

    Attributes:
        budget: the active key of ``budgets`` (``dvc exp run -S tables.budget=long``).
        dataset: the ``data.datasets`` key the variants train and are scored on (its test split).
        budgets: named budgets (:class:`BudgetConfig`).
        seeds: one training run per seed and variant (at least two, so a spread exists).
        variants: variant name -> ``create_model`` overrides of the one network (``{}`` = the default
            ASSA + FRFN AST). The names are what ``variant:`` refers to in ``pipelines/paper_tables.yaml``.
        latency: Table 9's timing.
        ensemble: Tables 1-3 "+" rows: the 8-way self-ensemble of the task models.
    """

    budget: str = "short"
    dataset: str = "embedded_rain"
    budgets: dict[str, BudgetConfig] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    ensemble: bool = True

    def problems(self, section: str = SECTION) -> list[str]:
        """Value checks beyond the types."""
        out = []
        if self.budget not in self.budgets:
            known = ", ".join(self.budgets)
            out.append(f"{section}.budget={self.budget!r} is not a key of {section}.budgets ({known})")
        if not self.seeds:
            out.append(f"{section}.seeds is empty: list at least one seed (two or more give a spread)")
        if len(set(self.seeds)) != len(self.seeds):
            out.append(f"{section}.seeds={self.seeds} repeats a seed")
        for name, over in self.budgets.items():
            if "experiment" in over.train or "dataset" in over.train or "seed" in over.train:
                out.append(f"{section}.budgets.{name}.train: experiment, dataset and seed are set by the stage")
        if self.latency.size < 16 or self.latency.repeats < 1:
            out.append(f"{section}.latency: size must be >= 16 and repeats >= 1")
        return out

    @property
    def active(self) -> BudgetConfig:
        """The budget the stages run."""
        return self.budgets[self.budget]


def load_tables_config(params: Mapping[str, Any], *, source: str = "") -> TablesConfig:
    """The ``tables`` section, strictly (unknown keys, wrong types and bad values in one error).

    Raises:
        PreflightError: every problem found.
    """
    from ast_model.config import check_section
    from pipelines.errors import PreflightError

    cfg, problems = check_section(TablesConfig, params, SECTION, source=source)
    if problems or cfg is None:
        raise PreflightError(problems or [f"{SECTION}: cannot be read"], source=source, section=SECTION)
    return cfg


def paper_tables(path: str | Path = PAPER_FILE) -> dict[str, Any]:
    """The paper's reported numbers (``pipelines/paper_tables.yaml``): ``{citation, tables: {tableN: ...}}``."""
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def variants_of(table: str, paper: Mapping[str, Any] | None = None) -> list[str]:
    """The variants (``tables.variants`` keys) whose ablation results ``table`` needs, in row order, unique."""
    if table == "figure4":
        return ["assa"]
    rows = (paper or paper_tables())["tables"][table]["rows"]
    return list(dict.fromkeys(r["variant"] for r in rows if "variant" in r))


# ---------------------------------------------------------------------------------------------------------
# Aggregation over seeds and the ordering verdicts
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """Values of one quantity over seeds.

    Attributes:
        values: one per seed (NaN-free).
    """

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat:
        """The finite values of ``values`` (None / NaN are dropped)."""
        return cls(tuple(float(v) for v in values if v is not None and math.isfinite(float(v))))

    @property
    def n(self) -> int:
        """Number of values."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """Mean (NaN when empty)."""
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def spread(self) -> float:
        """Half the range, ``(max - min) / 2`` (0 for one value, NaN when empty)."""
        return (max(self.values) - min(self.values)) / 2 if self.values else math.nan

    def beyond(self, other: Stat) -> bool:
        """Every value above every value of ``other`` (needs two values on each side)."""
        return self.n >= 2 and other.n >= 2 and min(self.values) > max(other.values)

    def format(self, digits: int = 2) -> str:
        """``mean ± spread`` (``-`` when empty)."""
        if not self.values:
            return "-"
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.spread:.{digits}f}"


@dataclass(frozen=True)
class PairVerdict:
    """One pair the paper ranks: ``higher`` beat ``lower`` in the paper; ``status`` says what ours did."""

    higher: str
    lower: str
    status: str  # agrees | reversed | undecided


def ordering(rows: Sequence[tuple[str, float | None, Stat]]) -> tuple[str, list[PairVerdict]]:
    """The paper's ordering checked against ours.

    Args:
        rows: ``(name, the paper's value or None, our values)``; higher is better. Rows without a paper
            value (or with no values of ours) are not compared; pairs the paper ties are skipped.

    Returns:
        ``(verdict, pairs)`` with verdict ``reproduced`` / ``not reproduced`` / ``undecided`` (module
        docstring) or ``no comparison`` when fewer than two rows have both.
    """
    usable = [(n, p, s) for n, p, s in rows if p is not None and s.n]
    pairs = []
    for (na, pa, sa), (nb, pb, sb) in itertools.combinations(usable, 2):
        if pa == pb:
            continue
        (hn, hs), (ln, ls) = ((na, sa), (nb, sb)) if pa > pb else ((nb, sb), (na, sa))
        status = "agrees" if hs.beyond(ls) else "reversed" if ls.beyond(hs) else "undecided"
        pairs.append(PairVerdict(hn, ln, status))
    if not pairs:
        return "no comparison", pairs
    if any(p.status == "reversed" for p in pairs):
        return "not reproduced", pairs
    if all(p.status == "agrees" for p in pairs):
        return "reproduced", pairs
    return "undecided", pairs


def significant_differences(rows: Sequence[tuple[str, Stat]]) -> list[tuple[str, str]]:
    """Pairs ``(better, worse)`` of rows whose difference is beyond the spread (module docstring)."""
    out = []
    for (na, sa), (nb, sb) in itertools.combinations(rows, 2):
        if sa.beyond(sb):
            out.append((na, nb))
        elif sb.beyond(sa):
            out.append((nb, na))
    return out


def verdict_sentence(verdict: str, pairs: Sequence[PairVerdict], what: str = "PSNR") -> str:
    """One sentence for a caption: the verdict and the pair counts."""
    if verdict == "no comparison":
        return f"The paper's {what} ordering: no comparison possible (fewer than two rows with numbers)."
    counts = {s: sum(p.status == s for p in pairs) for s in ("agrees", "reversed", "undecided")}
    reversed_ = [f"{p.lower} > {p.higher}" for p in pairs if p.status == "reversed"]
    text = (
        f"The paper's {what} ordering is **{verdict}** here: of {len(pairs)} pairs the paper ranks, "
        f"{counts['agrees']} agree beyond the spread, {counts['reversed']} are reversed beyond it, "
        f"{counts['undecided']} are undecided (within the spread)."
    )
    if reversed_:
        text += " Reversed: " + "; ".join(reversed_) + "."
    return text


def differences_sentence(diffs: Sequence[tuple[str, str]], what: str = "PSNR") -> str:
    """One sentence naming the differences beyond the spread (or saying there are none)."""
    if not diffs:
        return f"No {what} difference between our rows is beyond the spread over seeds."
    return f"{what} differences beyond the spread over seeds: " + "; ".join(f"{a} > {b}" for a, b in diffs) + "."


# ---------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Table:
    """A table as written: a title, a caption and rows of cells (the first column names the row).

    Attributes:
        name: ``table4``, ...
        title: the paper's title of the table.
        columns: column headers.
        rows: one list of cells (strings) per row, as many as ``columns``.
        caption: paragraphs under the table (dataset, budget, protocol, hardware, verdicts).
        csv_rows: machine-readable rows (one dict each, same keys in every row) for ``.csv`` and ``dvc plots``.
    """

    name: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    caption: list[str]
    csv_rows: list[dict[str, Any]]

    def markdown(self) -> str:
        """The ``.md`` text: a heading, the table, the caption paragraphs."""
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"{self.name}: a row has {len(row)} cells for {len(self.columns)} columns: {row}")
        label = self.name.replace("table", "Table ").replace("figure", "Figure ")
        lines = [f"# {label}: {self.title}", ""]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
        lines.append("")
        for paragraph in self.caption:
            lines += [paragraph, ""]
        return "\n".join(lines)

    def csv(self) -> str:
        """The ``.csv`` text (header from the first row's keys; empty values for missing keys)."""
        keys = list(dict.fromkeys(k for row in self.csv_rows for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for row in self.csv_rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in keys})
        return buf.getvalue()

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``<folder>/<name>.md`` and ``.csv`` atomically; returns both paths."""
        folder = Path(folder)
        md, csv_path = folder / f"{self.name}.md", folder / f"{self.name}.csv"
        atomic_write_bytes(md, self.markdown().encode())
        atomic_write_bytes(csv_path, self.csv().encode())
        return md, csv_path


def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a cell (``-`` for None / NaN)."""
    if value is None or not math.isfinite(float(value)):
        return "-"
    return f"{float(value):.{digits}f}"


def hardware() -> str:
    """The machine that ran a stage, for captions: CPU model and cores (or the GPU), torch version and threads."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
    return (
        f"{device}; {cpu}, {os.cpu_count()} cores, torch {torch.__version__.split('+')[0]} "
        f"with {torch.get_num_threads()} intra-op thread(s)"
    )
