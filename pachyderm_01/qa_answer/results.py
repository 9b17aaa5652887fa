"""What the QA core gives back for one row: a ``Span`` or a ``RowFailure``.

Plain dataclasses without torch: the run, the CLI and the tests name them without loading the model stack.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """An answer: ``context[start:end] == answer``; ``score`` is the pipeline's probability."""

    answer: str
    score: float
    start: int
    end: int


@dataclass(frozen=True)
class RowFailure:
    """A row the model could not answer, with a reason fit for the ``rejected`` file."""

    reason: str
