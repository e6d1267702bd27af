"""Atomic, durable writes (temporary file, fsync, rename, fsync of the folder) and the output-folder lock."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked
    fcntl = None

logger = logging.getLogger(__name__)
LOCK_FILE = ".lock"
_held_locks: dict[str, int] = {}  # resolved folder → fd of its locked `.lock` (this process's runs)
_registry = threading.Lock()


class FolderInUse(ValueError):
    """Another process's run holds the output folder."""


class DiskFull(OSError, ValueError):
    """No space left while writing a file: an OSError (errno ENOSPC, filename) and a ValueError, so the CLI prints
    its one line. Make one with `DiskFull(errno.ENOSPC, "No space left on device", path)`."""

    def __str__(self) -> str:
        return (f"{self.filename}: no space left on device; the partial file was removed — free some space (or "
                "choose another output folder) and rerun")


@contextlib.contextmanager
def writing(path: str | Path, partial: str | Path | None = None):
    """Run a write of `path`; on failure remove `partial` (its temporary file), and turn a full disk into DiskFull."""
    try:
        yield
    except BaseException as err:
        if partial is not None:
            Path(partial).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, DiskFull) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush `path` (a file, or a folder's entries) to the disk; best effort for a folder."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic(path: str | Path):
    """Yield a temporary path beside `path` to write; when the block ends, the file is made durable (fsync), renamed
    over `path` and the folder fsynced, so `path` is never seen half-written — not after a kill -9, nor after a
    power cut. On an error the temporary file is removed (a full disk is DiskFull)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path, tmp):
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    _fsync(path.parent, directory=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` atomically and durably (see `atomic`)."""
    with atomic(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` atomically and durably (temporary file, fsync, rename, fsync of the folder; see `atomic`): a
    reader never sees half of it. Every marker, stats file and checkpoint goes through here or `atomic`."""
    with atomic(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def _lock_holder(lock: Path) -> str:
    try:
        return lock.read_text().strip() or "?"
    except OSError:
        return "?"


def _holds(key: str, lock: Path) -> bool:
    """Does this process already hold `lock` (the same file: a folder deleted and made again needs a new lock)?"""
    fd = _held_locks.get(key)
    if fd is None:
        return False
    try:
        mine, now = os.fstat(fd), os.stat(lock)
        if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
            return True
    except OSError:
        pass
    os.close(_held_locks.pop(key))
    return False


def lock_folder(folder: str | Path) -> None:
    """Hold `<folder>/.lock` for the rest of the process, or raise FolderInUse naming the process holding it.

    The lock is an advisory `flock`: it goes when the process ends, however it ends (no stale lock after a kill).
    The same process may lock a folder again (a rerun, the demo's stages).
    """
    folder = Path(folder)
    lock, key = folder / LOCK_FILE, str(folder.resolve())
    if fcntl is None:
        return
    with _registry:
        if not _holds(key, lock):
            _held_locks[key] = _acquire(folder, lock)


def _acquire(folder: Path, lock: Path) -> int:
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise FolderInUse(f"{folder} is in use by another mithridate run (pid {_lock_holder(lock)}); wait for "
                              "it or choose another --out") from None
        logger.warning("%s: cannot lock (%s); not guarding it against concurrent runs", folder, err)
        return os.open(lock, os.O_RDONLY)  # held like a lock, so the warning comes once
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
