"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

Shared by the engine cache, the daemon's spool and results, and the host's run directory.
"""

import os
import tempfile
from typing import Optional


def atomic_write(path: str, data: bytes, fsync: bool = True, mode: Optional[int] = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    ``mode`` sets the file's permissions (the temporary file is created 0600); ``fsync`` makes the data
    and the rename survive a power cut.
    """
    directory = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_directory(directory)  # the rename itself must survive a power cut
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def fsync_directory(directory: str) -> None:
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not open directories; the data itself is synced
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
