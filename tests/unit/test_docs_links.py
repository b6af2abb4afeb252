"""The repository documents itself: every citation into ``docs/`` and every relative link resolves.

Checked over the repository's own ``.py``, ``.md`` and ``.yaml`` files (git's view: tracked plus untracked
files that are not ignored, so ``.venv/`` and ``mlartifacts/`` are out):

- every ``docs/<page>`` citation names a file that exists, and a ``#anchor`` on a Markdown page names a
  heading of that page (GitHub's anchor rules);
- every relative Markdown link (``[text](path#anchor)``) resolves the same way, relative to the file that
  contains it;
- nothing cites the private notes the knowledge came from (files that are not in the repository);
- every repository path a ``docs/`` page names in backticks exists (files get renamed under the docs).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = (".py", ".md", ".yaml", ".yml")
# Folders never scanned when git cannot list the files (outputs, environments, caches, data).
_WALK_SKIP = {
    ".git",
    ".venv",
    "mlartifacts",
    "mlruns",
    "data",
    "models",
    "outputs",
    "checkpoints",
    "reports",
    ".dvc",
    ".cache",
    "__pycache__",
    ".pytest_cache",
    "dvc_plots",
    "node_modules",
}

# `docs/<path>` not preceded by a path or word character (so `reports/docs/x` is not a citation); the path
# ends in a word character, so a sentence's full stop is not part of it.
DOCS_CITATION = re.compile(r"(?<![\w./-])(docs/[\w./-]*\w)(?:#([\w-]+))?")
MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
MD_REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
# In .py / .yaml only links to Markdown pages count: `x[0](y)` is a call, not a link.
CODE_MD_LINK = re.compile(r"\]\(([^)\s]+\.md(?:#[\w-]+)?)\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
FENCE = re.compile(r"^ {0,3}(```|~~~)")
# The private notes the docs/ pages replaced, and their folder. Spelled in pieces so that a grep for
# stale citations does not report this file.
_NOTES = ["AST" + "-SPEC", "RECIPES", "DATA", "DESIGN", "ENV"]
PRIVATE_NOTES = re.compile(
    r"\b(?:"
    + _NOTES[0]
    + r"(?:\.md)?\b|(?:"
    + "|".join(_NOTES[1:])
    + r")\.md\b)|(?:\.\./)+"
    + "shared"
    + r"\b|/work/"
    + "shared"
)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def repo_files(root: Path) -> list[Path]:
    """The repository's text files to check: git's tracked and untracked-but-not-ignored files.

    Falls back to a directory walk (skipping outputs, environments and caches) outside a git checkout.
    """
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in _WALK_SKIP]
            names += [os.path.relpath(os.path.join(folder, f), root) for f in files]
    paths = {root / n for n in names if n.endswith(SUFFIXES)}
    return sorted(p for p in paths if p.is_file())  # a deleted-but-tracked file is not there to check


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _outside_fences(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of the lines that are not inside a fenced code block."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def anchors(page: Path) -> set[str]:
    """Every anchor a Markdown page defines: heading slugs (repeats get -1, -2, ...) and ``<a id>``."""
    text = page.read_text(encoding="utf-8")
    found: set[str] = set(HTML_ANCHOR.findall(text))
    seen: Counter[str] = Counter()
    for _, line in _outside_fences(text):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
            seen[base] += 1
    return found


def _resolve(target: Path, anchor: str | None, cache: dict[Path, set[str]]) -> str | None:
    """Why ``target#anchor`` does not resolve, or None when it does."""
    if not target.exists():
        return "no such file"
    if anchor and target.suffix == ".md" and target.is_file():
        if target not in cache:
            cache[target] = anchors(target)
        if anchor not in cache[target]:
            return f"no heading with anchor #{anchor}"
    return None


def _links(path: Path, text: str) -> list[tuple[int, str]]:
    """``(line, target)`` of the link targets in a file (Markdown links; in code only links to pages)."""
    found = []
    if path.suffix == ".md":
        for number, line in _outside_fences(text):
            line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
            found += [(number, m.group(1)) for m in MD_LINK.finditer(line)]
            found += [(number, m.group(1)) for m in MD_REF_LINK.finditer(line)]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            found += [(number, m.group(1)) for m in CODE_MD_LINK.finditer(line)]
    return found


def broken_references(root: Path, files: list[Path]) -> list[str]:
    """Every docs/ citation and relative link in ``files`` that does not resolve, as ``file:line: ...``."""
    problems: list[str] = []
    cache: dict[Path, set[str]] = {}
    for path in files:
        rel = path.relative_to(root)
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            for match in DOCS_CITATION.finditer(line):
                why = _resolve(root / match.group(1), match.group(2), cache)
                if why:
                    problems.append(f"{rel}:{number}: {match.group(0)}: {why}")
        for number, target in _links(path, text):
            if SCHEME.match(target) or target.startswith("//"):
                continue  # http:, https:, mailto:, ... are not files of the repository
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part) if file_part else path
            why = _resolve(dest, anchor or None, cache)
            if why:
                problems.append(f"{rel}:{number}: link {target}: {why}")
    return problems


def private_note_citations(root: Path, files: list[Path]) -> list[str]:
    """Lines that cite the private notes (not in the repository), as ``file:line: text``."""
    hits = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if PRIVATE_NOTES.search(line):
                hits.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return hits


# --------------------------------------------------------------------------------------------------
# The repository
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files() -> list[Path]:
    # This module's own checker tests hold deliberately broken references: not part of the scan.
    found = [p for p in repo_files(ROOT) if p != Path(__file__).resolve()]
    names = {p.relative_to(ROOT).as_posix() for p in found}
    # The scan must actually see the repository (an empty list would pass every check below).
    assert {"README.md", "params.yaml", "docs/README.md", "ast_model/nn/ast.py"} <= names, sorted(names)[:20]
    return found


def test_every_docs_citation_and_relative_link_resolves(files: list[Path]) -> None:
    problems = broken_references(ROOT, files)
    assert not problems, "broken docs/ citations or links:\n" + "\n".join(problems)


def test_nothing_cites_the_private_notes(files: list[Path]) -> None:
    hits = private_note_citations(ROOT, files)
    assert not hits, "cite the docs/ page that holds this knowledge instead (docs/README.md lists them):\n" + "\n".join(
        hits
    )


# A repository path in backticks on a docs page: `ast_model/nn/ast.py`, `tests/unit/`, `.ci/run`.
BACKTICK_PATH = re.compile(r"`((?:ast_model|pipelines|tests|docs|reports|data|\.ci)/[^`\s]*)`")


def named_paths(text: str) -> list[str]:
    """The repository paths a page names in backticks; one ``{a,b}`` group is expanded, placeholders
    (``<experiment>``, ``*``, ``...``) are not paths and are skipped."""
    out = []
    for match in BACKTICK_PATH.finditer(text):
        path = match.group(1).partition("#")[0].rstrip(".,:;")  # anchors: checked with the citations
        if any(mark in path for mark in ("<", "*", "...", "$")):
            continue
        brace = re.search(r"\{([^{}]*)\}", path)
        options = brace.group(1).split(",") if brace else [""]
        out += [path[: brace.start()] + o + path[brace.end() :] if brace else path for o in options]
    return out


# What the pipeline writes (DVC outputs, stores): absent from a fresh clone until `make run`.
PIPELINE_OUTPUTS = (
    "data/prepared",
    "data/shards",
    "models/",
    "metrics/",
    "reports/",
    "checkpoints/",
    "mlflow.db",
    "mlartifacts",
    "dvc_plots",
)


def test_paths_named_on_docs_pages_exist() -> None:
    # Files get renamed under the docs' feet; a page that names a missing file misleads its reader.
    missing = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        missing += [
            f"docs/{page.name}: `{p}`"
            for p in named_paths(text)
            if not (ROOT / p).exists() and not p.startswith(PIPELINE_OUTPUTS)
        ]
    assert not missing, "paths named on docs pages that do not exist:\n" + "\n".join(missing)


def test_named_paths_skip_placeholders_and_expand_braces() -> None:
    text = "`tests/data/x_{T,B}.json`, `models/<experiment>/`, `data/raw/*`, `ast_model/nn/ast.py`."
    assert named_paths(text) == ["tests/data/x_T.json", "tests/data/x_B.json", "ast_model/nn/ast.py"]


def test_the_docs_index_links_every_page() -> None:
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    linked = {target.partition("#")[0] for _, target in _links(ROOT / "docs" / "README.md", index)}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages <= linked, f"docs/README.md does not link {sorted(pages - linked)}"


# --------------------------------------------------------------------------------------------------
# The checker itself (it must be able to fail)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Quirk 3", "quirk-3"),
        ("Test protocols", "test-protocols"),
        ("MATLAB parity", "matlab-parity"),
        ("Torch and torchvision", "torch-and-torchvision"),
        ("The `float` protocol: PSNR/SSIM, (RGB)", "the-float-protocol-psnrssim-rgb"),
        ("Where [our profiles](x.md) differ", "where-our-profiles-differ"),
        ("snake_case stays", "snake_case-stays"),
    ],
)
def test_slug_follows_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_checker_reports_each_kind_of_broken_reference(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "page.md").write_text(
        "# Page\n\n## Quirk 3\n\n## Quirk 3\n\n```\n## not a heading\n```\n"
        "[ok](page.md#quirk-3) [dup](page.md#quirk-3-1) [self](#page) [web](https://example.com/x.md)\n"
        "[gone](missing.md) [bad anchor](page.md#not-a-heading) [fenced](page.md#not-a-heading-1)\n"
        "`[code](missing-in-code.md)`\n",
        encoding="utf-8",
    )
    (tmp_path / "mod.py").write_text(
        '"""See docs/page.md#quirk-3 and docs/page.md.\n\nAlso docs/page.md#quirk-4 and docs/nothing.md."""\n'
        "x = table[0](value)  # a call, not a link\n",
        encoding="utf-8",
    )
    (tmp_path / "conf.yaml").write_text("# see [the page](docs/page.md#page), reports/docs/x.md\n", encoding="utf-8")
    files = sorted([docs / "page.md", tmp_path / "mod.py", tmp_path / "conf.yaml"])
    problems = broken_references(tmp_path, files)
    assert problems == [
        "docs/page.md:11: link missing.md: no such file",
        "docs/page.md:11: link page.md#not-a-heading: no heading with anchor #not-a-heading",
        "docs/page.md:11: link page.md#not-a-heading-1: no heading with anchor #not-a-heading-1",
        "mod.py:3: docs/page.md#quirk-4: no heading with anchor #quirk-4",
        "mod.py:3: docs/nothing.md: no such file",
    ]


def test_checker_finds_citations_of_the_private_notes(tmp_path: Path) -> None:
    note = "AST" + "-SPEC"
    lines = [
        f"ASSA ({note} 3.2)",
        f"see {note}.md step by step",
        "RECIPES" + ".md section 3",
        "(DATA" + ".md section 2)",
        "the store of DESIGN" + ".md:",
        "two processes (ENV" + ".md)",
        "copies of ../" + "shared" + "/x.json",
        "docs/data.md#metrics, METADATA" + ".md and data/README.md are fine",
    ]
    path = tmp_path / "mod.py"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    hits = private_note_citations(tmp_path, [path])
    assert [h.split(":")[1] for h in hits] == ["1", "2", "3", "4", "5", "6", "7"]
