"""A job and its datums as the runner records them (``jobs/<id>.json``, ``jobs/<id>.datums.jsonl``).

One typed record read by the runner, the store (base jobs, recovery) and the CLI (``list-jobs``,
``logs``); ``to_json`` / ``from_json`` are the only places that know the file's keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
        return cls(
            id=data["id"],
            datum_id=data.get("datum_id", ""),
            inputs=data.get("inputs", ""),
            state=data["state"],
            tries=data.get("tries", 0),
            seconds=data.get("seconds", 0.0),
            error=data.get("error", ""),
            from_job=data.get("from_job"),
        )


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
        data: dict[str, Any] = {
            "id": self.id,
            "pipeline": self.pipeline,
            "spec": self.spec,
            "spec_version": self.spec_version,
            "inputs": self.inputs,
            "started": self.started,
            "state": self.state,
            "reason": self.reason,
            "processed": self.processed,
            "skipped": self.skipped,
            "failed": self.failed,
            "output_commit": self.output_commit,
            "datums": [d.to_json() for d in self.datums],
        }
        if self.finished is not None:
            data["finished"] = self.finished
        if self.seconds is not None:
            data["seconds"] = self.seconds
        if self.resumable:
            data["resumable"] = True
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        return cls(
            id=data["id"],
            pipeline=data["pipeline"],
            spec=data.get("spec", ""),
            spec_version=data.get("spec_version", ""),
            inputs=data.get("inputs", {}),
            started=data.get("started", ""),
            state=data.get("state", "running"),
            reason=data.get("reason", ""),
            finished=data.get("finished"),
            seconds=data.get("seconds"),
            processed=data.get("processed", 0),
            skipped=data.get("skipped", 0),
            failed=data.get("failed", 0),
            output_commit=data.get("output_commit"),
            resumable=data.get("resumable", False),
            datums=[DatumRecord.from_json(d) for d in data.get("datums", [])],
        )
