"""Order pipelines so each runs after the pipelines whose output repos it reads (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from .spec import PipelineSpec, SpecError, upstream_repos


def pipeline_order(specs: Sequence[PipelineSpec]) -> list[PipelineSpec]:
    """Topological order (Kahn), ties broken by name so runs are reproducible.

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
    order: list[PipelineSpec] = []
    ready = sorted(name for name, d in deps.items() if not d)
    done: set[str] = set()
    while ready:
        name = ready.pop(0)
        order.append(by_name[name])
        done.add(name)
        newly = [n for n, d in deps.items() if n not in done and n not in ready and d <= done]
        ready = sorted(set(ready) | set(newly))
    if len(order) != len(by_name):
        cycle = sorted(set(by_name) - done)
        raise SpecError(f"pipelines form a cycle through their inputs: {', '.join(cycle)}")
    return order


def downstream_of(failed: str, specs: Sequence[PipelineSpec]) -> set[str]:
    """Every pipeline that reads, directly or not, the output of ``failed``."""
    blocked: set[str] = set()
    frontier = {failed}
    while frontier:
        frontier = {s.name for s in specs if upstream_repos(s) & frontier and s.name not in blocked}
        blocked |= frontier
    return blocked
