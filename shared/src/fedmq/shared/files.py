"""Writing files that other processes read while we write them (Mosquitto on reload, nodes on restart)."""

from __future__ import annotations

import glob
import os
from typing import Dict, List, Optional, Tuple, Union


def write_atomic(path: str, data: Union[bytes, str], mode: int = 0o644, sync: bool = False) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``: a reader sees the old
    file or the new one, never half of it. ``mode`` applies to the new file; ``sync`` fsyncs it first."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, or any other failure: leave no temporary file behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove_leftovers(path: str) -> List[str]:
    """Remove what ``write_atomic(path, ...)`` left behind when its process died mid-write (SIGKILL, a power
    cut): ``path.tmp.<pid>`` of processes that no longer run. A live process's file, such as a second process
    started with the same identity by mistake, is left to it. Returns the files removed."""
    removed = []
    for left in glob.glob(glob.escape(path) + ".tmp.*"):
        pid = left.rsplit(".", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and _running(int(pid)):
            continue
        try:
            os.unlink(left)
            removed.append(left)
        except OSError:
            pass
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unreadable(named: Dict[str, Optional[str]]) -> List[Tuple[str, str, str]]:
    """``(key, path, why)`` for every file named by a configuration key (None: not set) that cannot be read."""
    out = []
    for key, path in named.items():
        if not path:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            out.append((key, path, exc.strerror or str(exc)))
    return out
