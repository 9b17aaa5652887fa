"""Map container paths in a spec (``/pfs``, secret mount paths) to local folders (pure).

The spec's ``cmd`` runs unchanged except for one documented rewrite: every occurrence of a mapped
prefix that stands as a path (``/pfs``, ``/pfs/out``, ``"/pfs/in"``, ``x=/pfs/a``) in argv, stdin
and env values is replaced by the datum's sandbox folder. ``/pfsx`` or ``a/pfs`` are left alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# A local folder substituted into a shell script must survive word splitting unquoted.
_SAFE_LOCAL = re.compile(r"^[A-Za-z0-9_./@:+,-]+$")


class UnsafePathError(ValueError):
    """A local folder whose name would break a shell command after substitution."""


@dataclass(frozen=True)
class PathMap:
    mapping: tuple[tuple[str, str], ...]  # (container prefix, local folder), longest prefix first

    @classmethod
    def of(cls, pairs: Mapping[str, str]) -> PathMap:
        for local in pairs.values():
            if not _SAFE_LOCAL.match(local):
                raise UnsafePathError(
                    f"local folder {local!r} contains spaces or shell characters; "
                    "choose a --root without them"
                )
        ordered = sorted(((p.rstrip("/") or "/", v) for p, v in pairs.items()), key=lambda kv: -len(kv[0]))
        return cls(tuple(ordered))

    def _pattern(self) -> re.Pattern[str]:
        alts = "|".join(re.escape(prefix) for prefix, _ in self.mapping)
        return re.compile(r"(?<![A-Za-z0-9_.\-/])(" + alts + r")(?=$|[/\s\"'`;:,)|&<>])")

    def apply(self, text: str) -> str:
        if not self.mapping:
            return text
        table = dict(self.mapping)
        return self._pattern().sub(lambda m: table[m.group(1)], text)

    def apply_all(self, texts: Iterable[str]) -> list[str]:
        return [self.apply(t) for t in texts]

    def mentions(self, text: str, prefix: str) -> bool:
        """Whether ``text`` uses container path ``prefix`` (e.g. an env var pointing into a secret)."""
        return PathMap.of({prefix: "/x"}).apply(text) != text
