"""Order pipelines so each runs after the pipelines whose output repos it reads (pure).

``dependency_order`` is the one topological sort: the local runner orders parsed specs with it
(``pipeline_order``), the deploy orders the requests it sends to a cluster (``deploy.dag_order``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence, Set
from typing import TypeVar

from .spec import PipelineSpec, SpecError, upstream_repos

K = TypeVar("K", bound=Hashable)


class DependencyCycle(ValueError):
    """Keys that cannot be ordered: a cycle, and whatever depends on it."""

    def __init__(self, members: list) -> None:
        super().__init__(f"dependency cycle through {members}")
        self.members = members


def dependency_order(keys: Sequence[K], deps: Mapping[K, Set[K]]) -> list[K]:
    """Each key after the keys it depends on (Kahn); among the keys ready, the earliest in ``keys``
    first, so the caller's order breaks ties. Raises DependencyCycle."""
    order: list[K] = []
    done: set[K] = set()
    while len(order) < len(keys):
        ready = next((k for k in keys if k not in done and deps.get(k, set()) <= done), None)
        if ready is None:
            raise DependencyCycle([k for k in keys if k not in done])
        order.append(ready)
        done.add(ready)
    return order


def pipeline_order(specs: Sequence[PipelineSpec]) -> list[PipelineSpec]:
    """Topological order, ties broken by name so runs are reproducible.

    Raises SpecError on two specs with one name or on a cycle.
    """
    by_name: dict[str, PipelineSpec] = {}
    for spec in specs:
        if spec.name in by_name:
            raise SpecError(
                f"pipeline {spec.name!r} is defined twice ({by_name[spec.name].source}, {spec.source})"
            )
        by_name[spec.name] = spec
    deps = {name: upstream_repos(spec) & by_name.keys() for name, spec in by_name.items()}
    try:
        return [by_name[name] for name in dependency_order(sorted(by_name), deps)]
    except DependencyCycle as cycle:
        raise SpecError(f"pipelines form a cycle through their inputs: {', '.join(cycle.members)}") from None


def downstream_of(failed: str, specs: Sequence[PipelineSpec]) -> set[str]:
    """Every pipeline that reads, directly or not, the output of ``failed``."""
    blocked: set[str] = set()
    frontier = {failed}
    while frontier:
        frontier = {s.name for s in specs if upstream_repos(s) & frontier and s.name not in blocked}
        blocked |= frontier
    return blocked
