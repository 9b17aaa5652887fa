"""A job and its datums as the runner records them (``jobs/<id>.json``, ``jobs/<id>.datums.jsonl``).

One typed record read by the runner, the store (base jobs, recovery) and the CLI (``list-jobs``,
``logs``); ``to_json`` / ``from_json`` are the only places that know the file's keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .datums import Datum

#: states a job ends in; ``running`` until then
FINISHED_STATES = ("success", "failure", "killed")


@dataclass
class DatumRecord:
    """One datum of a job: processed (``success`` / ``failed``) or reused (``skipped``, ``from_job``)."""

    id: str  # the datum hash (FILESET_ID)
    datum_id: str  # PACH_DATUM_ID
    inputs: str
    state: str
    tries: int = 0
    seconds: float = 0.0
    error: str = ""
    from_job: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "datum_id": self.datum_id,
            "inputs": self.inputs,
            "state": self.state,
        }
        if self.state == "skipped":
            data["from_job"] = self.from_job
        else:
            data.update(tries=self.tries, seconds=self.seconds, error=self.error)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatumRecord:
        return cls(**_known(cls, data))


@dataclass
class DatumOutcome:
    """A datum the job processed: how its tries went and, on success, its output manifest."""

    datum: Datum
    ok: bool = False
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    tries: int = 0
    seconds: float = 0.0
    error: str = ""

    def record(self) -> DatumRecord:
        return DatumRecord(
            id=self.datum.id,
            datum_id=self.datum.pach_id,
            inputs=self.datum.describe(),
            state="success" if self.ok else "failed",
            tries=self.tries,
            seconds=round(self.seconds, 3),
            error=self.error,
        )

    def status(self) -> str:
        """How the datum ended, for the progress line."""
        return "ok" if self.ok else f"FAILED ({self.error}, {self.tries} tries)"


@dataclass
class JobRecord:
    """One job: what it read, how it ended, and every datum. Also the summary line of ``run``."""

    id: str
    pipeline: str
    spec: str = ""
    spec_version: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    started: str = ""
    state: str = "running"
    reason: str = ""
    finished: str | None = None
    seconds: float | None = None
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    output_commit: str | None = None
    resumable: bool = False  # killed with the runner: its finished datums are reused
    datums: list[DatumRecord] = field(default_factory=list)

    def summary_line(self) -> str:
        return f"{self.pipeline}: processed={self.processed} skipped={self.skipped} failed={self.failed}"

    def count(self, datums: list[DatumRecord]) -> None:
        """Processed and failed counts from the datums that ran."""
        self.processed = sum(d.state == "success" for d in datums)
        self.failed = sum(d.state == "failed" for d in datums)

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "datums"}
        for optional in ("finished", "seconds"):
            if data[optional] is None:
                del data[optional]
        if not self.resumable:
            del data["resumable"]
        data["datums"] = [d.to_json() for d in self.datums]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        known = _known(cls, data)
        known["datums"] = [DatumRecord.from_json(d) for d in data.get("datums", [])]
        return cls(**known)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that are fields of ``cls`` (a record written by another version may hold more)."""
    return {f.name: data[f.name] for f in fields(cls) if f.name in data}
