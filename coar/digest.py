"""SHA-256 digests of files and JSON records: what a reader checks a file the run wrote against.

Snakemake reruns a step when its inputs or code change, not when one of its outputs is altered
afterwards (a flipped bit, a value edited by hand, a copy from another run). Files whose readers
act on them record digests so the readers refuse an altered file: an edit's report.json lists its
files' (coar.edit.record), a masks: auto round's score carries its own and its state file's
(coar.rounds). Light on purpose: the workflow's start-up reads round scores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_digest(record: Mapping) -> str:
    """SHA-256 of a JSON record in canonical form (sorted keys, no spaces), as hex."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
