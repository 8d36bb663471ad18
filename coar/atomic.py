"""Atomic file writing: a file appears at its final name only once completely written.

Every writer goes through `atomic_path`, which also
- removes the temporary files that a killed earlier write of the same target left behind
  (a live writer holds a lock on its temporary file, so only orphans are removed), and
- turns "no space left on device", however the writing library words it, into DiskFullError
  naming the path, the bytes needed and the bytes free.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_TMP = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{32}\.tmp")
# How libraries report a full disk: errno 28 in an OSError, or only in the text (HDF5:
# "Can't decrement id ref count (errno = 28)"), or not at all (torch.save: "file write failed",
# "unexpected pos 832 vs 726"); an I/O error while the disk is (almost) full counts too.
_DISK_FULL_TEXT = ("errno = 28", "errno 28", "no space left on device")
_ALMOST_FULL_BYTES = 1 << 20


class DiskFullError(OSError):
    """The disk filled while writing a file; the message names the path and the space needed."""


@contextmanager
def atomic_path(path: str | os.PathLike, size_hint: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary file is removed, so a killed
    or failed step never leaves a file that looks complete. The temporary name starts with a
    dot and ends in .tmp, so glob patterns for the real files never match it. The temporary
    file exists (empty, locked) when the block starts; writers overwrite it. `size_hint` is the
    expected size in bytes, quoted when the disk fills.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    lock = _create_locked(tmp)
    try:
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException as err:
            if _is_disk_full(err, path.parent):
                raise _disk_full(path, tmp, size_hint) from err
            raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(lock)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of earlier, killed writes of `path`; return what was removed.

    A temporary file still locked by its writer (a write in progress) is kept. Where the file
    system offers no locks, nothing is removed: an orphan cannot be told from a live write.
    """
    path = Path(path)
    removed = []
    for name in glob.glob(glob.escape(f".{path.name}.") + "*.tmp", root_dir=path.parent):
        match = _TMP.fullmatch(name)
        candidate = path.parent / name
        if match is None or match["name"] != path.name or not _unlocked(candidate):
            continue
        candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def write_json(path: str | os.PathLike, data: object) -> None:
    """Write `data` as indented strict JSON, atomically; NaN and infinity are refused (ValueError)."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    with atomic_path(path, size_hint=len(text.encode())) as tmp:
        tmp.write_text(text)


def _create_locked(tmp: Path) -> int:
    """Create `tmp` and hold an exclusive lock on it (skipped where the file system has none)."""
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # no locks here (some parallel file systems): stale files are then left alone
    return fd


def _unlocked(candidate: Path) -> bool:
    """True if nobody holds a lock on `candidate` (its writer is gone)."""
    try:
        fd = os.open(candidate, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _is_disk_full(err: BaseException, directory: Path) -> bool:
    """Whether `err` (or an error it wraps) means the disk is full."""
    chain: BaseException | None = err
    while chain is not None:
        text = str(chain).lower()
        if isinstance(chain, OSError) and chain.errno == errno.ENOSPC:
            return True
        if any(marker in text for marker in _DISK_FULL_TEXT):
            return True
        if isinstance(chain, (OSError, RuntimeError)) and _free_bytes(directory) < _ALMOST_FULL_BYTES:
            return True
        chain = chain.__cause__ or chain.__context__
    return False


def _free_bytes(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0


def _disk_full(path: Path, tmp: Path, size_hint: int | None) -> DiskFullError:
    written = tmp.stat().st_size if tmp.exists() else 0
    needed = f"{size_hint} bytes needed" if size_hint else f"more than {written} bytes needed"
    return DiskFullError(
        errno.ENOSPC,
        f"disk full at {path}: {needed}, {_free_bytes(path.parent)} bytes free; "
        "free some space (or move the run to a larger disk) and rerun the step",
    )
