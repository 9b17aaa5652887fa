"""Merge per-datum outputs into a job's output commit (pure).

Pachyderm 2.x fails a job when two datums write the same output path, whatever the content, since
the result would depend on datum order; so does this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class OutputCollision:
    path: str
    datum_ids: tuple[str, ...]

    def message(self) -> str:
        ids = ", ".join(d[:12] for d in self.datum_ids)
        return f"output path {self.path!r} was written by {len(self.datum_ids)} datums ({ids})"


def merge_outputs(
    outputs: Iterable[tuple[str, Mapping[str, str]]],
) -> tuple[dict[str, str], list[OutputCollision]]:
    """Union of ``(datum id, {path: sha256})`` outputs; returns (merged files, collisions).

    A file written by one datum that another datum uses as a directory also collides.
    """
    owners: dict[str, list[str]] = {}
    merged: dict[str, str] = {}
    for datum_id, files in outputs:
        for path, sha in files.items():
            owners.setdefault(path, []).append(datum_id)
            merged[path] = sha
    collisions = [OutputCollision(p, tuple(ids)) for p, ids in sorted(owners.items()) if len(ids) > 1]
    dirs: dict[str, str] = {}
    for path, ids in owners.items():
        parts = path.split("/")
        for i in range(1, len(parts)):
            dirs.setdefault("/".join(parts[:i]), ids[0])
    for path in sorted(set(dirs) & set(owners)):
        collisions.append(OutputCollision(path, (owners[path][0], dirs[path])))
    return merged, collisions
