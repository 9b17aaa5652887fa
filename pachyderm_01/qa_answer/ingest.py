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
from qa_answer.object_names import map_object_name, resolve_inside
from qa_answer.sources import QuestionSource

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
    # Two objects may map to one path ("x\\y.csv" and "x_y.csv"): the one whose name needed no change wins.
    owner: dict[str, str] = {}
    for obj, mapped in listed:
        if (
            obj.refused is None
            and mapped.path is not None
            and (mapped.path not in owner or mapped.reason is None)
        ):
            owner[mapped.path] = obj.name
    for obj, mapped in listed:
        if obj.refused is not None:
            log.warning("skipping %r from %s: %s", obj.name, source.url, obj.refused)
            summary.skipped += 1
            continue
        if mapped.path is None:
            log.warning("skipping %r from %s: %s", obj.name, source.url, mapped.reason)
            summary.skipped += 1
            continue
        if owner[mapped.path] != obj.name:
            log.warning(
                "skipping %r from %s: it maps to %r, the path of %r",
                obj.name,
                source.url,
                mapped.path,
                owner[mapped.path],
            )
            summary.skipped += 1
            continue
        if mapped.reason:
            log.info("saving %r as %r: %s", obj.name, mapped.path, mapped.reason)
        try:
            target = resolve_inside(out_dir, mapped.path)
            target.parent.mkdir(parents=True, exist_ok=True)
        except (ValueError, OSError) as exc:
            log.warning("skipping %r from %s: cannot create %r: %s", obj.name, source.url, mapped.path, exc)
            summary.skipped += 1
            continue
        try:
            with PendingFile(target, TEMP_PREFIX) as pending:
                fetched = source.fetch(obj, pending.path)
                if fetched is not None:
                    pending.commit()
        except IsADirectoryError:
            log.warning("skipping %r from %s: %r is a folder", obj.name, source.url, mapped.path)
            summary.skipped += 1
            continue
        if fetched is None:
            log.warning("skipping %r from %s: it disappeared while being copied", obj.name, source.url)
            summary.skipped += 1
            continue
        summary.files += 1
        summary.bytes += target.stat().st_size
    summary.seconds = time.perf_counter() - started
    return summary
