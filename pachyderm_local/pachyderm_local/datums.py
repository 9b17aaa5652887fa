"""Turn a pipeline's input tree plus the input commits into datums, and name them (pure).

A datum has two names, as in Pachyderm (``worker/common``). ``pach_id`` is ``DatumID``: BLAKE2b-256 over,
for each input, its name, repo, branch and matched path (a folder with its trailing ``/``), each followed
by its length; it is ``PACH_DATUM_ID``, the same for a path whatever its content. ``id`` plays the part of
``HashDatum``: a sha256 over each input's name, matched path and every contained file's relative path and
content hash, so an edited file is a new datum; skipping and the local records use it. The commit id is
left out of both: the same files in a later commit are the same datum, which is what lets a rerun skip it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from .globs import expand_glob, files_under
from .spec import CronInput, CrossInput, Input, PfsInput, UnionInput


@dataclass(frozen=True)
class CommitView:
    """What datum planning needs of an input commit: its id and its files (relative path -> sha256)."""

    commit_id: str
    files: Mapping[str, str]


@dataclass(frozen=True)
class DatumInput:
    name: str
    repo: str
    commit_id: str
    path: str  # the matched path, "/" for the whole repo
    files: tuple[tuple[str, str], ...]  # (relative path, sha256) of each file in the datum
    is_dir: bool = False
    branch: str = "master"

    @property
    def pfs_path(self) -> str:
        """The path as PFS names it: a folder ends with ``/``."""
        return self.path + "/" if self.is_dir and self.path != "/" else self.path


@dataclass(frozen=True)
class Datum:
    inputs: tuple[DatumInput, ...]

    @property
    def id(self) -> str:
        material = [[i.name, i.path, [list(f) for f in i.files]] for i in self.inputs]
        return hashlib.sha256(json.dumps(material, separators=(",", ":")).encode()).hexdigest()

    @property
    def pach_id(self) -> str:
        """Pachyderm's ``common.DatumID``: what ``PACH_DATUM_ID`` holds."""
        digest = hashlib.blake2b(digest_size=32)
        for item in self.inputs:
            for part in (item.name, item.repo, item.branch, item.pfs_path):
                data = part.encode()
                digest.update(data)
                digest.update(struct.pack(">q", len(data)))
        return digest.hexdigest()

    def describe(self) -> str:
        return " ".join(f"{i.name}:{i.path}" for i in self.inputs)


def plan_datums(node: Input, commits: Mapping[str, CommitView]) -> list[Datum]:
    """All datums of an input tree; ``commits`` maps each leaf's repo to its input commit."""
    if isinstance(node, (PfsInput, CronInput)):
        commit = commits[node.repo]
        # a cron input is one datum per tick (datum/create.go createCron: glob "/*")
        glob = node.glob if isinstance(node, PfsInput) else "/*"
        datums = []
        for path in expand_glob(glob, commit.files):
            contained = tuple((rel, commit.files[rel]) for rel in files_under(path, commit.files))
            is_dir = path == "/" or path[1:] not in commit.files
            item = DatumInput(node.name, node.repo, commit.commit_id, path, contained, is_dir)
            datums.append(Datum((item,)))
        return datums
    if isinstance(node, CrossInput):
        parts = [plan_datums(child, commits) for child in node.children]
        return [Datum(tuple(i for d in combo for i in d.inputs)) for combo in itertools.product(*parts)]
    if isinstance(node, UnionInput):
        return [d for child in node.children for d in plan_datums(child, commits)]
    raise TypeError(f"unknown input node {node!r}")


def split_done(datums: list[Datum], done_ids: set[str]) -> tuple[list[Datum], list[Datum]]:
    """(to process, to skip): a datum is skipped when its id already succeeded under this spec version.

    Duplicate datums (a union of the same input twice) are processed once, as Pachyderm does.
    """
    todo: list[Datum] = []
    skip: list[Datum] = []
    seen: set[str] = set()
    for datum in datums:
        if datum.id in seen:
            continue
        seen.add(datum.id)
        (skip if datum.id in done_ids else todo).append(datum)
    return todo, skip
