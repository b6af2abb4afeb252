"""The prepared-data manifest: ``data/prepared/<dataset>/<split>/manifest.json``.

One manifest per split lists every pair with its image size and the sha256 and byte count of both files,
plus the pair's metadata (degradation parameters for the embedded default). Embedded pairs live beside
the manifest (``input/<key>.png``, ``target/<key>.png``); real datasets are never copied: their manifest
points into the dataset root, and ``shard`` reads the originals, checking them against these hashes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ast_model.data.files import (
    atomic_write_bytes,
    atomic_write_json,
    decode_image,
    encode_png,
    sha256_bytes,
)
from ast_model.data.sources.base import PairInfo

if TYPE_CHECKING:  # the embedded generator imports scikit-image (~0.5 s): only the annotation needs it
    from ast_model.data.embedded import EmbeddedPair

MANIFEST = "manifest.json"
FORMAT = 1
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ManifestError(ValueError):
    """A manifest that is missing, malformed, or no longer matches the files it lists."""


def write_embedded_split(split_dir: Path, pairs: Iterable[EmbeddedPair], *, header: dict[str, Any]) -> dict[str, Any]:
    """Write generated pairs as PNGs plus their manifest into ``split_dir`` (a staging folder).

    Args:
        split_dir: the split's folder (created).
        pairs: from :func:`ast_model.data.embedded.generate_split`.
        header: dataset, source, task, split (copied into the manifest).

    Returns:
        The manifest.
    """
    records = []
    for pair in pairs:
        files = {}
        for kind, image in (("input", pair.input), ("target", pair.target)):
            data = encode_png(image)
            rel = f"{kind}/{pair.key}.png"
            atomic_write_bytes(split_dir / rel, data)
            files[kind] = (rel, sha256_bytes(data), len(data))
        h, w = pair.input.shape[:2]
        records.append(_record(pair.key, files, w, h, pair.meta))
    manifest = {**header, "format": FORMAT, "root": None, "pairs": len(records), "samples": records}
    atomic_write_json(split_dir / MANIFEST, manifest)
    return manifest


def write_real_split(
    split_dir: Path, infos: Iterable[PairInfo], *, root: str, header: dict[str, Any]
) -> dict[str, Any]:
    """Write the manifest of a checked real split; the images stay where they are.

    Args:
        split_dir: the split's folder (created).
        infos: from :func:`ast_model.data.sources.read_split`.
        root: the dataset root as params give it (stored as is, so the manifest does not embed this
            machine's absolute paths when params use a repo-relative one).
        header: dataset, source, task, split, subset.

    Returns:
        The manifest.
    """
    records = []
    for info in infos:
        files = {
            "input": (info.ref.input.relative_to(root).as_posix(), info.input_sha256, info.input_bytes),
            "target": (info.ref.target.relative_to(root).as_posix(), info.target_sha256, info.target_bytes),
        }
        records.append(_record(info.ref.key, files, info.width, info.height, info.ref.meta))
    manifest = {**header, "format": FORMAT, "root": root, "pairs": len(records), "samples": records}
    atomic_write_json(split_dir / MANIFEST, manifest)
    return manifest


def _record(key: str, files: dict[str, tuple[str, str, int]], width: int, height: int, meta: dict) -> dict:
    return {
        "key": key,
        "width": width,
        "height": height,
        **{kind: rel for kind, (rel, _, _) in files.items()},
        **{f"{kind}_sha256": sha for kind, (_, sha, _) in files.items()},
        **{f"{kind}_bytes": size for kind, (_, _, size) in files.items()},
        "meta": meta,
    }


def read_manifest(split_dir: Path) -> dict[str, Any]:
    """Load and sanity-check a split's manifest.

    Args:
        split_dir: ``data/prepared/<dataset>/<split>``.

    Returns:
        The manifest dict.

    Raises:
        ManifestError: missing, not JSON, or of another format.
    """
    path = Path(split_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: missing (run the prepare stage)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "samples" not in manifest:
        raise ManifestError(f"{path}: not a format-{FORMAT} manifest (rerun the prepare stage)")
    return manifest


def pair_files(manifest: dict[str, Any], split_dir: Path, record: dict[str, Any]) -> tuple[Path, Path]:
    """Where a manifest record's input and target live.

    Args:
        manifest: from :func:`read_manifest`.
        split_dir: the folder holding the manifest.
        record: one entry of ``manifest["samples"]``.

    Returns:
        ``(input_path, target_path)``.
    """
    base = Path(split_dir) if manifest["root"] is None else Path(manifest["root"])
    return base / record["input"], base / record["target"]


def read_pair_bytes(manifest: dict[str, Any], split_dir: Path, record: dict[str, Any]) -> tuple[bytes, bytes]:
    """Read a pair's two files as PNG bytes, verified against the manifest.

    PNG files are passed through byte for byte (so a shard holds exactly the prepared file); other
    formats (AGAN-Data's JPEGs) are decoded and re-encoded losslessly as PNG.

    Args:
        manifest: from :func:`read_manifest`.
        split_dir: the folder holding the manifest.
        record: one entry of ``manifest["samples"]``.

    Returns:
        ``(input_png, target_png)``.

    Raises:
        ManifestError: a file is missing or changed since ``prepare`` hashed it (names the file).
    """
    out = []
    for kind, path in zip(("input", "target"), pair_files(manifest, split_dir, record), strict=True):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read ({exc.strerror or exc}); rerun prepare") from exc
        if sha256_bytes(data) != record[f"{kind}_sha256"]:
            raise ManifestError(f"{path}: changed since prepare hashed it (sha256 differs); rerun prepare")
        out.append(data if data.startswith(_PNG_MAGIC) else encode_png(decode_image(data, str(path))))
    return out[0], out[1]
