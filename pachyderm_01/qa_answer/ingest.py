"""Mirror every ``*.csv`` of a question source into a local folder, keeping (sanitised) relative paths.

Each file is fetched into a temporary name in its target folder and renamed into place, so a killed
run never leaves half a CSV. Unsafe names are skipped with a logged reason; the run goes on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from qa_answer.contract import PendingFile
from qa_answer.object_names import MappedName, map_object_name, resolve_inside
from qa_answer.sources import QuestionSource, SourceObject

log = logging.getLogger(__name__)

TEMP_PREFIX = ".ingest-"


@dataclass
class IngestSummary:
    files: int = 0
    skipped: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def line(self, url: str) -> str:
        return (
            f"ingest summary: source={url} files={self.files} skipped={self.skipped} "
            f"bytes={self.bytes} seconds={self.seconds:.2f}"
        )


def mirror_source(source: QuestionSource, out_dir: Path) -> IngestSummary:
    """Copy the source's CSVs under ``out_dir``; returns counts. Raises SourceError on source failures."""
    started = time.perf_counter()
    summary = IngestSummary()
    out_dir.mkdir(parents=True, exist_ok=True)
    listed = [(obj, map_object_name(obj.name)) for obj in source.list_csv()]
    owner = _path_owners(listed)
    for obj, mapped in listed:
        # the file written, or why the object was skipped
        outcome: Path | str | None = _refusal(obj, mapped, owner)
        if outcome is None and mapped.path is not None:
            outcome = _copy(source, obj, mapped, mapped.path, out_dir)
        if isinstance(outcome, Path):
            summary.files += 1
            summary.bytes += outcome.stat().st_size
        else:
            log.warning("skipping %r from %s: %s", obj.name, source.url, outcome)
            summary.skipped += 1
    summary.seconds = time.perf_counter() - started
    return summary


def _path_owners(listed: list[tuple[SourceObject, MappedName]]) -> dict[str, str]:
    """Which object each mapped path is saved from.

    Two objects may map to one path ("x\\y.csv" and "x_y.csv"): the one whose name needed no change wins.
    """
    owner: dict[str, str] = {}
    for obj, mapped in listed:
        if (
            obj.refused is None
            and mapped.path is not None
            and (mapped.path not in owner or mapped.reason is None)
        ):
            owner[mapped.path] = obj.name
    return owner


def _refusal(obj: SourceObject, mapped: MappedName, owner: dict[str, str]) -> str | None:
    """Why ``obj`` is not copied before anything is written, or None."""
    if obj.refused is not None:
        return obj.refused
    if mapped.path is None:
        return mapped.reason
    if owner[mapped.path] != obj.name:
        return f"it maps to {mapped.path!r}, the path of {owner[mapped.path]!r}"
    return None


def _copy(
    source: QuestionSource, obj: SourceObject, mapped: MappedName, path: str, out_dir: Path
) -> Path | str:
    """Fetch ``obj`` to ``out_dir / path`` by way of a temporary file: that file, or why it was skipped."""
    if mapped.reason:
        log.info("saving %r as %r: %s", obj.name, path, mapped.reason)
    try:
        target = resolve_inside(out_dir, path)
        target.parent.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as exc:
        return f"cannot create {path!r}: {exc}"
    try:
        with PendingFile(target, TEMP_PREFIX) as pending:
            fetched = source.fetch(obj, pending.path)
            if fetched is not None:
                pending.commit()
    except IsADirectoryError:
        return f"{path!r} is a folder"
    if fetched is None:
        return "it disappeared while being copied"
    return target
