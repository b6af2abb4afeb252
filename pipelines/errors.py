"""One error style for every stage and command: what, where, how to fix, in a few lines, exit status 2.

A problem a user can fix (a params key, a corrupt shard, a missing checkpoint, an unwritable folder, a
tracking server that does not answer) is printed as one line, or as a short list under a one-line
header when there are several, and the command exits with status 2 before it starts any work it would
have to throw away. Everything else is a bug and keeps its traceback. ``--debug`` shows the traceback of
user errors too.

    train: 3 problems in params.yaml (section train_p1), nothing started:
      - train_p1.phases[0].batch_size=6 does not divide into world size 4 x grad_accum 1 = 4: ...
      - train_p1.grad_clip must be >= 0 (0 = off)
      - data/shards/embedded_rain/val/shard-000000.tar: shard does not match index.json (sha256 ...): ...
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from ast_model.checkpoint import CheckpointError
from ast_model.config import ConfigError
from ast_model.data.files import ImageFileError
from ast_model.data.manifest import ManifestError
from ast_model.data.shards import ShardError
from ast_model.data.sources import SourceError

EXIT_USER = 2


class PreflightError(Exception):
    """Problems found before any work started (a stage collects them all, then raises this once).

    Attributes:
        problems: one line each: what, where and how to fix.
        source: the params file the config problems are in ("" if none).
        section: the params section read ("" if none).
    """

    def __init__(self, problems: str | Sequence[str], *, source: str = "", section: str = "") -> None:
        lines = problems.splitlines() if isinstance(problems, str) else [str(p) for p in problems]
        self.problems = list(dict.fromkeys(line for line in lines if line.strip()))
        self.source, self.section = str(source), section
        super().__init__("\n".join(self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps source and section when pickled (a Prefect state or a worker process carries it).
        return (_rebuild_preflight_error, (self.problems, self.source, self.section))


def _rebuild_preflight_error(problems: list[str], source: str, section: str) -> PreflightError:
    return PreflightError(problems, source=source, section=section)


# The errors a user fixes without touching the code. FileNotFoundError: a missing checkpoint or input
# named by the message. (A PermissionError is an OSError but not listed: the pre-flight checks name the
# folder; one that still occurs mid-run is unexpected and keeps its traceback.)
USER_ERRORS: tuple[type[BaseException], ...] = (
    PreflightError,
    ConfigError,
    ShardError,
    SourceError,
    ManifestError,
    ImageFileError,
    CheckpointError,
    FileNotFoundError,
)


def problems_of(exc: BaseException) -> list[str]:
    """The problem lines of a user error (a list error keeps its items, others split into lines)."""
    if isinstance(exc, (PreflightError, SourceError, ConfigError)):
        lines = list(exc.problems)
    else:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return [line.removeprefix("- ").strip() for line in lines] or [type(exc).__name__]


def format_error(prog: str, exc: BaseException, *, outcome: str = "nothing started") -> str:
    """The user-facing text of ``exc``: one line for one problem, else a counted header and a list.

    Args:
        prog: the command's name (``train``, ``evaluate``, ``ast-restore``).
        exc: a user error.
        outcome: what happened (``nothing started``, ``nothing written``).

    Returns:
        The text to print on stderr (no trailing newline).
    """
    lines = problems_of(exc)
    source = getattr(exc, "source", "")
    section = getattr(exc, "section", "")
    where = ""
    if source:
        where = f" in {source}" + (f" (section {section})" if section else "")
    if len(lines) == 1:
        # A params problem names the file; a shard, folder or server problem names its own path or URI.
        is_key = (
            bool(section)
            and lines[0].startswith((f"{section}.", f"{section}:"))
            or lines[0].startswith(("unknown key", "no section", "no training section"))
        )
        prefix = f"{source}: " if source and (is_key or not section) and not lines[0].startswith(source) else ""
        return f"{prog}: {prefix}{lines[0]}"
    header = f"{prog}: {len(lines)} problems{where}, {outcome}:"
    return "\n".join([header, *(f"  - {line}" for line in lines)])


def run_cli(
    prog: str,
    body: Callable[[], int | None],
    *,
    debug: bool = False,
    outcome: str = "nothing started",
    stream: TextIO | None = None,
) -> int:
    """Run a command body with the one error style.

    Args:
        prog: the command's name for messages.
        body: the command; returns its exit status (None: 0).
        debug: re-raise user errors (full traceback) instead of the short message.
        outcome: what a user error means for the outputs (``nothing started`` / ``nothing written``).
        stream: where messages go (default: ``sys.stderr``).

    Returns:
        The body's status; 2 for a user error; 130 on Ctrl-C.
    """
    out = stream or sys.stderr
    try:
        status = body()
    except USER_ERRORS as exc:
        if debug:
            raise
        print(format_error(prog, exc, outcome=outcome), file=out, flush=True)
        return EXIT_USER
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=out, flush=True)
        return 130
    return int(status or 0)
