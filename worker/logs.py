"""Structured logs: one JSON object per line on stderr, so log shippers need no parser
and hostile bytes in a field cannot forge a line (json escapes them)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def log(event: str, **fields: Any) -> None:
    sys.stderr.write(json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, default=str) + "\n")
    sys.stderr.flush()
