"""Parsing of human-written sizes and durations ("256M", "1.5s", "500ms", "1h30m").

Kept apart from the models so the CLI, the protocol and profile files all accept the
same spellings and reject the same garbage with the same message.
"""

from __future__ import annotations

import functools
import math
import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1 << 40,
    "tib": 1 << 40,
}
_DURATION_UNITS_MS = {
    "ms": 1.0,
    "s": 1000.0, "sec": 1000.0, "secs": 1000.0, "second": 1000.0, "seconds": 1000.0,
    "m": 60_000.0, "min": 60_000.0, "mins": 60_000.0, "minute": 60_000.0, "minutes": 60_000.0,
    "h": 3_600_000.0, "hr": 3_600_000.0, "hrs": 3_600_000.0, "hour": 3_600_000.0, "hours": 3_600_000.0,
}
_NUMBER_WITH_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
# "1h30m", "2m30s", "1s500ms" (Go's and docker's spelling): terms, each with its unit.
_DURATION_TERM = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]+)\s*")
# The words for "no limit", where a limit may be absent (cpu_time, cpus): TOML, the
# CLI and msgpack strings have no nil of their own.
NO_LIMIT_WORDS = ("none", "unlimited")

# Anything bigger than this is a typo or an attack, not a limit.
MAX_SIZE = 1 << 50
MAX_DURATION_MS = 7 * 24 * 3600 * 1000


# Pure functions, called for every limit of every job, mostly with the same few
# spellings (the defaults): cached. typed: True and 1 must not share an entry.
@functools.lru_cache(maxsize=1024, typed=True)
def parse_size(text: str | int) -> int:
    """Bytes from "256M", "1GiB", "4096" (binary units, like docker and isolate)."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"invalid size {text!r}")
    if isinstance(text, int):
        value = text
    else:
        match = _NUMBER_WITH_UNIT.match(text)
        unit = match.group(2).lower() if match else ""
        if not match or unit not in _SIZE_UNITS:
            raise ValueError(f"invalid size {text!r} (examples: 512K, 256M, 1G)")
        value = math.floor(float(match.group(1)) * _SIZE_UNITS[unit])
    if not 0 < value <= MAX_SIZE:
        raise ValueError(f"size {text!r} out of range (1 byte .. 1 PiB)")
    return value


@functools.lru_cache(maxsize=1024, typed=True)
def parse_duration_ms(text: str | int | float) -> int:
    """Milliseconds from "2s", "1.5s", "250ms", "2" (seconds, like isolate), "1h",
    "1h30m"."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ValueError(f"invalid duration {text!r}")
    if isinstance(text, (int, float)):
        # (compared before the conversion: a TOML int may be past any float)
        value = float(text) * 1000.0 if abs(text) <= MAX_DURATION_MS else math.inf
    else:
        value = _duration_text_ms(text)
    if not math.isfinite(value) or not 0 < value <= MAX_DURATION_MS:
        raise ValueError(f"duration {text!r} out of range (1 ms .. 7 days)")
    return max(1, round(value))


def _duration_text_ms(text: str) -> float:
    """A bare number (seconds), or one or more number+unit terms added up."""
    stripped = text.strip()
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", stripped):
        return float(stripped) * 1000.0
    total, position = 0.0, 0
    while position < len(stripped) or not stripped:
        term = _DURATION_TERM.match(stripped, position)
        unit = term.group(2).lower() if term else ""
        if not term or unit not in _DURATION_UNITS_MS:
            raise ValueError(f"invalid duration {text!r} (examples: 2s, 1.5s, 250ms, 2m, 1h, 1m30s)")
        total += float(term.group(1)) * _DURATION_UNITS_MS[unit]
        position = term.end()
    return total


def is_no_limit(value: object) -> bool:
    """True for the spellings of "no limit" ("none", "unlimited", any case)."""
    return isinstance(value, str) and value.strip().lower() in NO_LIMIT_WORDS
