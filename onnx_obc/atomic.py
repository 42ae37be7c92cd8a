"""Atomic file writes: a temp file beside the target, renamed into place, removed on any
failure; an OSError becomes a message that says what went wrong and what to do."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

from .errors import ObcError


def write_atomic(path: str | os.PathLike, data: bytes, what: str, flag: str) -> None:
    """Write `data` to a temp file beside `path`, then rename it into place; on any failure
    the temp file is removed, an existing file at `path` is kept, and an OSError becomes an
    ObcError naming `what` ("the report") and the option (`flag`) to give another path."""
    path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise ObcError(f"cannot write {what} {path!r} ({exc.strerror or exc}); "
                           + ("free space in its directory or " if full else "")
                           + f"give {flag} a path in a writable directory") from None
        raise


def write_error(path: Path, exc: OSError) -> str:
    """What went wrong writing `path`, and what to do about it."""
    why = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = f"free space in {str(path.parent)!r} or write the output elsewhere"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "choose an output path in a directory you can write to"
    else:
        hint = "check the output directory, or write the output elsewhere"
    return f"cannot write {str(path)!r} ({why}); {hint}"
