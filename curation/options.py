"""Stage configs as frozen dataclasses: presets, `--field=value` overrides, a generated CLI and `config.json`.

A stage declares `@dataclass(frozen=True) class XConfig` whose fields are made with `opt(default, "help")`.
`add_arguments` turns the fields into argparse options (Literal fields get `choices=`), and `resolve`
applies a preset and then the overrides, checking each value against the field's type.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import os
import threading
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked
    fcntl = None

logger = logging.getLogger(__name__)
LOCK_FILE = ".lock"
_held_locks: dict[str, int] = {}  # resolved folder → fd of its locked `.lock` (this process's runs)
_registry = threading.Lock()


def opt(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    """A config field with a default and the help text shown by `--help`."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults (configs are frozen)")
    return dataclasses.field(default=default, metadata={"help": help})


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse_value(name: str, hint: Any, raw: str) -> Any:
    """Parse one command-line string into the field's type, or raise a ValueError naming the field."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X] or X | None
        if raw.lower() in ("none", "null", ""):
            return None
        return _parse_value(name, next(a for a in args if a is not type(None)), raw)
    if origin is Literal:
        if raw not in args:
            raise ValueError(f"--{name}={raw!r}: allowed values are {', '.join(map(str, args))}")
        return raw
    if origin is tuple:
        item = args[0] if args else str
        return tuple(_parse_value(name, item, p.strip()) for p in raw.split(",") if p.strip())
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--{name}={raw!r}: expected true or false")
    if hint in (int, float):
        try:
            return hint(raw)
        except ValueError:
            raise ValueError(f"--{name}={raw!r}: expected {hint.__name__}") from None
    return raw


def add_arguments(parser: argparse.ArgumentParser, cls: type, presets: dict[str, Any]) -> None:
    """Add `--preset` and one `--<field>` option per config field to `parser`."""
    parser.add_argument("--preset", default="default", choices=sorted(presets), help="named set of defaults")
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        kw: dict[str, Any] = {"default": None, "metavar": f.name.upper()}
        if get_origin(hint) is Literal:
            kw["choices"] = list(get_args(hint))
            kw.pop("metavar")
        default = getattr(presets["default"], f.name)
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")  # argparse formats help
        parser.add_argument(f"--{f.name}", help=text, **kw)


def resolve(cls: type, presets: dict[str, Any], preset: str, overrides: dict[str, str | None]) -> Any:
    """Apply `overrides` (raw strings, None = not given) to preset `preset` of config class `cls`."""
    if preset not in presets:
        raise ValueError(f"--preset={preset!r}: allowed values are {', '.join(sorted(presets))}")
    return build(cls, presets, preset, {name: raw for name, raw in overrides.items() if raw is not None})


def field_type(cls: type, name: str) -> Any:
    """The type hint of field `name` of config class `cls`."""
    return _hints(cls)[name]


def build(cls: type, presets: dict[str, Any], preset: str, fields: dict[str, Any]) -> Any:
    """The Python API's config: preset `preset` with `fields` (Python values) applied.

    A str given for a field of another type is parsed as on the command line ("0.5", "a,b", "true"); a list
    becomes a tuple and a Path a str. Unknown fields and presets are ValueErrors naming the allowed ones."""
    if preset not in presets:
        raise ValueError(f"preset={preset!r}: allowed values are {', '.join(sorted(presets))}")
    hints, changes = _hints(cls), {}
    for name, value in fields.items():
        if name not in hints:
            raise ValueError(f"unknown field {name!r} for {cls.__name__}; valid fields: {', '.join(hints)}")
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, str) and hints[name] is not str:
            value = _parse_value(name, hints[name], value)
        if isinstance(value, (list, tuple)):
            value = tuple(str(v) if isinstance(v, Path) else v for v in value)
        changes[name] = value
    return dataclasses.replace(presets[preset], **changes)


def from_args(cls: type, presets: dict[str, Any], ns: argparse.Namespace) -> Any:
    """Resolve a config from a parsed argparse namespace built by `add_arguments`."""
    names = [f.name for f in dataclasses.fields(cls)]
    return resolve(cls, presets, ns.preset, {n: getattr(ns, n) for n in names})


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready dict of a config (tuples become lists)."""
    return {"_config": type(cfg).__name__, **dataclasses.asdict(cfg)}


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


def die_with_parent() -> None:
    """In a multiprocessing worker: end it as soon as the process that started it ends, however that ends (a kill -9
    included), so that no orphan keeps writing into an output folder whose lock went with its parent. A no-op in a
    process not started by multiprocessing. Linux: PR_SET_PDEATHSIG; elsewhere a thread watching for re-parenting."""
    import multiprocessing
    import signal

    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    try:
        import ctypes

        armed = ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError, TypeError):
        armed = False
    if os.getppid() != parent.pid:  # the parent ended before the signal was armed
        os._exit(1)
    if armed:
        return

    def watch() -> None:
        while os.getppid() == parent.pid:
            threading.Event().wait(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def from_dict(cls: type, saved: dict[str, Any]) -> Any:
    """The inverse of `to_dict`: a `cls` from a saved config (fields `cls` lacks are dropped, lists become tuples)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in names})


def write_config(cfg: Any, folder: str | Path, name: str = "config.json") -> Path:
    """Lock `folder` (see `lock_folder`) and write the resolved config to `<folder>/config.json` (the first act of
    every stage)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_folder(folder)
    return write_text(folder / name, json.dumps(to_dict(cfg), indent=2, sort_keys=True, default=str) + "\n")


def check_resumable(cfg: Any, folder: str | Path, runtime_fields: tuple[str, ...] = ()) -> None:
    """Refuse to resume into `folder` when its `config.json` came from a different config.

    Fields in `runtime_fields` (threads, processes, …) may differ: they change speed, not results.
    """
    path = Path(folder) / "config.json"
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{path}: not valid JSON; delete the folder or choose another output folder") from None
    new = json.loads(json.dumps(to_dict(cfg), default=str))
    diff = sorted(k for k in set(old) | set(new) if k not in runtime_fields and old.get(k) != new.get(k))
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in diff[:4])
        raise ValueError(f"{folder} holds a run with another config ({shown}); choose another output folder "
                         "or delete it to start over")


def check_positive(cfg: Any, *names: str) -> None:
    """Raise a ValueError naming the first field among `names` that is not > 0."""
    for n in names:
        v = getattr(cfg, n)
        if v is None or v <= 0:
            raise ValueError(f"{type(cfg).__name__}.{n}={v!r}: must be > 0")


def check_choice(cfg: Any, name: str, allowed: typing.Iterable[Any]) -> None:
    """Raise a ValueError when field `name` is not one of `allowed` (Literal fields set in Python code)."""
    allowed = tuple(allowed)
    v = getattr(cfg, name)
    if v not in allowed:
        raise ValueError(f"{type(cfg).__name__}.{name}={v!r}: allowed values are {', '.join(map(str, allowed))}")


def literal_values(cls: type, name: str) -> tuple:
    """The allowed values of a Literal-typed field."""
    return get_args(_hints(cls)[name])
