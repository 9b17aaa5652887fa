"""Check a cron input's ``spec`` as Pachyderm does at create time (pure).

Pachyderm (``cronutil.ParseCronExpression``) accepts ``@never`` and otherwise robfig/cron v1.2.0's
``ParseStandard``: five fields (minute hour day-of-month month day-of-week) with ``*``/``?``, ranges
``a-b``, steps ``/n``, lists ``a,b`` and month/day names, or a descriptor (``@yearly``, ``@annually``,
``@monthly``, ``@weekly``, ``@daily``, ``@midnight``, ``@hourly``, ``@every <Go duration>``).
"""

from __future__ import annotations

import re

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_BOUNDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    (
        "month",
        1,
        12,
        dict(zip(_MONTHS, range(1, 13), strict=True)),
    ),
    ("day of week", 0, 6, dict(zip(_DAYS, range(7), strict=True))),
)
_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_GO_DURATION = re.compile(r"[-+]?(?:0|(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+)")


class CronSpecError(ValueError):
    """A cron spec Pachyderm refuses; the message is robfig/cron's reason."""


def _number(text: str, names: dict[str, int]) -> int:
    if text.lower() in names:
        return names[text.lower()]
    if not re.fullmatch(r"[-+]?\d+", text):
        raise CronSpecError(f"Failed to parse int from {text}")
    value = int(text)
    if value < 0:
        raise CronSpecError(f"Negative number ({value}) not allowed: {text}")
    return value


def _check_range(expr: str, low: int, high: int, names: dict[str, int]) -> None:
    range_and_step = expr.split("/")
    low_high = range_and_step[0].split("-")
    if low_high[0] in ("*", "?"):
        start, end = low, high
    else:
        start = _number(low_high[0], names)
        if len(low_high) == 1:
            end = start
        elif len(low_high) == 2:
            end = _number(low_high[1], names)
        else:
            raise CronSpecError(f"Too many hyphens: {expr}")
    if len(range_and_step) == 2:
        step = _number(range_and_step[1], {})
        if len(low_high) == 1:
            end = high
        if step == 0:
            raise CronSpecError(f"Step of range should be a positive number: {expr}")
    elif len(range_and_step) > 2:
        raise CronSpecError(f"Too many slashes: {expr}")
    if start < low:
        raise CronSpecError(f"Beginning of range ({start}) below minimum ({low}): {expr}")
    if end > high:
        raise CronSpecError(f"End of range ({end}) above maximum ({high}): {expr}")
    if start > end:
        raise CronSpecError(f"Beginning of range ({start}) beyond end of range ({end}): {expr}")


def validate_cron_spec(spec: str) -> None:
    """Raise CronSpecError when Pachyderm's create pipeline would refuse ``spec``."""
    if spec.strip() == "@never":
        return
    if not spec:
        raise CronSpecError("Empty spec string")
    if spec.startswith("@"):
        if spec in _DESCRIPTORS:
            return
        if spec.startswith("@every "):
            duration = spec[len("@every ") :]
            if not _GO_DURATION.fullmatch(duration):
                raise CronSpecError(f"Failed to parse duration {spec}")
            return
        raise CronSpecError(f"Unrecognized descriptor: {spec}")
    fields = spec.split()
    if len(fields) != 5:
        raise CronSpecError(f"Expected exactly 5 fields, found {len(fields)}: {spec}")
    for text, (_, low, high, names) in zip(fields, _BOUNDS, strict=True):
        for expr in (part for part in text.split(",") if part):
            _check_range(expr, low, high, names)
