"""Where a stage's folders live: a local path, or an fsspec URL (`s3://bucket/prefix`, `gs://…`, `file://…`).

A local path (and a `file://` URL, which `normalize` turns into one) keeps the local code path: `Path` objects,
`disk.atomic` (temporary file, fsync, rename) and the `flock` folder lock. An object-storage URL goes through
fsspec (`fsspec.core.url_to_fs`), configured the standard way: for S3, the AWS variables botocore reads
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` for an S3-compatible
server) or `~/.aws/config`, or fsspec's own configuration (`FSSPEC_S3_ENDPOINT_URL`, `~/.config/fsspec/`).

What replaces the local guarantees on object storage:

- atomic writes: an object is written in one PUT of the whole file (`output`, `write_bytes`; a large file is a
  multipart upload, which also appears only when complete), so a reader never sees half of it; a worker killed
  mid-write leaves no object;
- markers: as locally, a shard's data is written before its `__stats__/<id>.json`, so a marker names a complete
  shard (object stores give read-after-write consistency: S3 since 2020, GCS, Azure);
- the folder lock: `<folder>/.lock` is created only if absent (a conditional PUT, `If-None-Match: *`), holding the
  host and process id; it is removed when the process ends normally. A lock left by a killed run of the same host
  is taken over when that process is gone; one of another host must be deleted by hand (the error names it).

URLs are kept as `str` (`join`, `glob` return them); local paths as `Path`, so local code is unchanged.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path, PurePosixPath

from mithridate.core import disk

logger = logging.getLogger(__name__)
LOCAL_PROTOCOLS = ("file", "local")
ENV_PREFIXES = ("AWS_", "FSSPEC_", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_")  # what tasks need to connect
EXTRAS = {"s3": 'pip install "mithridate[s3]" (s3fs)', "s3a": 'pip install "mithridate[s3]" (s3fs)',
          "gs": "pip install gcsfs", "gcs": "pip install gcsfs", "az": "pip install adlfs", "abfs": "pip install adlfs"}
_locks: dict[str, str] = {}  # remote folder → its lock object (this process's runs)
_registry = threading.Lock()


def protocol(value: str | os.PathLike) -> str | None:
    """The URL scheme of `value` ("s3", "file", …), or None for a plain path."""
    text = str(value)
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head and head.replace("+", "").replace("-", "").isalnum() else None


def is_remote(value: str | os.PathLike | None) -> bool:
    """Is `value` an fsspec URL of a non-local filesystem (object storage)?"""
    return value is not None and protocol(value) not in (None, *LOCAL_PROTOCOLS)


def normalize(value: str) -> str:
    """`file://` URLs → plain local paths; anything else unchanged."""
    if protocol(value) in LOCAL_PROTOCOLS:
        import fsspec.core

        return fsspec.core.url_to_fs(value)[1]
    return value


def check(owner: str, field: str, value: str) -> str:
    """`value` normalised (see `normalize`); a ValueError naming the field, the value and what is allowed when its
    protocol is unknown to fsspec or its package is not installed."""
    proto = protocol(value)
    if proto is None or proto in LOCAL_PROTOCOLS:
        return normalize(value) if value else value
    registry = importlib.import_module("fsspec.registry")  # not `fsspec.registry`: the package's attribute shadows it

    allowed = "a local path, file://…, or an fsspec URL whose filesystem package is installed (s3://… with s3fs)"
    if proto not in registry.known_implementations and proto not in registry.registry:
        raise ValueError(f"{owner}.{field}={value!r}: unknown protocol {proto!r}; allowed: {allowed}")
    try:
        registry.get_filesystem_class(proto)
    except ImportError:
        hint = EXTRAS.get(proto, f"install the fsspec filesystem package of {proto!r}")
        raise ValueError(f"{owner}.{field}={value!r}: protocol {proto!r} needs a package that is not installed "
                         f"({hint}); allowed: {allowed}") from None
    return value


def check_fields(cfg, *names: str) -> None:
    """`check` each named folder field of a frozen config, writing back its normalised value."""
    for name in names:
        value = getattr(cfg, name)
        if value:
            object.__setattr__(cfg, name, check(type(cfg).__name__, name, value))


def fs_path(url: str):
    """(fsspec filesystem, path without protocol) of a URL. Listings are not cached: other workers write the same
    folders, and a cached listing would hide their files (an fsspec cache says "not found" for a file it did not
    list)."""
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(str(url))
    cache = getattr(fs, "dircache", None)
    if getattr(cache, "use_listings_cache", False):
        cache.clear()
        cache.use_listings_cache = False
    return fs, path


def location(value: str | os.PathLike) -> Path | str:
    """A folder or file as the rest of the code takes it: a Path when local, the URL (str, no trailing /) else."""
    return str(value).rstrip("/") if is_remote(value) else Path(value)


def join(folder: str | os.PathLike, *names: str) -> Path | str:
    """`folder/name/…`: a Path when local, a URL when remote."""
    if not is_remote(folder):
        return Path(folder).joinpath(*names)
    return "/".join([str(folder).rstrip("/"), *names])


def name(path: str | os.PathLike) -> str:
    """The last part of a path or URL."""
    return PurePosixPath(str(path).rstrip("/")).name


def stem(path: str | os.PathLike) -> str:
    """The last part without its suffix."""
    return PurePosixPath(str(path).rstrip("/")).stem


def parent(path: str | os.PathLike) -> Path | str:
    """The folder of a path or URL."""
    if not is_remote(path):
        return Path(path).parent
    return str(path).rstrip("/").rsplit("/", 1)[0]


def resolve(path: str | os.PathLike) -> str:
    """An absolute form every worker can use: a resolved local path, or the URL itself."""
    return str(path) if is_remote(path) else str(Path(path).resolve())


def exists(path: str | os.PathLike) -> bool:
    if not is_remote(path):
        return Path(path).exists()
    fs, p = fs_path(path)
    return fs.exists(p)


def isfile(path: str | os.PathLike) -> bool:
    if not is_remote(path):
        return Path(path).is_file()
    fs, p = fs_path(path)
    return fs.isfile(p)


def isdir(path: str | os.PathLike) -> bool:
    """A local folder, or a prefix holding at least one object."""
    if not is_remote(path):
        return Path(path).is_dir()
    fs, p = fs_path(path)
    return fs.isdir(p)


def glob(folder: str | os.PathLike, pattern: str) -> list:
    """The files of `folder` matching `pattern` (one level, or `*/x` patterns), sorted: Paths, or URLs."""
    if not is_remote(folder):
        return sorted(Path(folder).glob(pattern))
    fs, p = fs_path(folder)
    found = fs.glob(f"{p.rstrip('/')}/{pattern}", detail=True)
    return sorted(fs.unstrip_protocol(f) for f, info in found.items() if info.get("type") != "directory")


def stamp(path: str | os.PathLike) -> list:
    """What changes when a file is written again: [size, mtime in ns] locally; [size, ETag (or modification
    time)] on object storage."""
    if not is_remote(path):
        st = Path(path).stat()
        return [st.st_size, st.st_mtime_ns]
    fs, p = fs_path(path)
    info = fs.info(p)
    token = next((info[k] for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified") if info.get(k)), None)
    return [int(info.get("size") or 0), str(token)]


def read_bytes(path: str | os.PathLike) -> bytes:
    if not is_remote(path):
        return Path(path).read_bytes()
    fs, p = fs_path(path)
    return fs.cat_file(p)


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(path).decode(encoding)


def open_input(path: str | os.PathLike):
    """A binary file object to read (seekable: pyarrow reads a parquet footer through it)."""
    if not is_remote(path):
        return open(path, "rb")
    fs, p = fs_path(path)
    return fs.open(p, "rb")


@contextlib.contextmanager
def source(path: str | os.PathLike):
    """What pyarrow or numpy should read: the local path itself, or an open remote file object."""
    if not is_remote(path):
        yield str(path)
        return
    with open_input(path) as fh:
        yield fh


def write_bytes(path: str | os.PathLike, data: bytes) -> Path | str:
    """Write `data` whole: locally `disk.write_bytes` (temporary, fsync, rename), remotely one PUT."""
    if not is_remote(path):
        return disk.write_bytes(path, data)
    fs, p = fs_path(path)
    fs.pipe_file(p, data)
    return str(path)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path | str:
    """`write_bytes` of a text (markers, stats, configs)."""
    if not is_remote(path):
        return disk.write_text(path, text, encoding)
    return write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def output(path: str | os.PathLike):
    """Yield a local file path to write; when the block ends the file becomes `path` whole: locally `disk.atomic`
    (fsync, rename), remotely an upload of the finished file (one PUT, or a multipart upload that appears only when
    complete). On an error nothing is written."""
    if not is_remote(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with disk.atomic(path) as tmp:
            yield tmp
        return
    with tempfile.TemporaryDirectory(prefix="mithridate-up-") as d:
        tmp = Path(d) / name(path)
        yield tmp
        fs, p = fs_path(path)
        fs.put_file(str(tmp), p)


@contextlib.contextmanager
def local_copy(path: str | os.PathLike):
    """Yield a local path holding the file: `path` itself when local, a downloaded temporary copy when remote."""
    if not is_remote(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="mithridate-down-") as d:
        tmp = Path(d) / name(path)
        fs, p = fs_path(path)
        fs.get_file(p, str(tmp))
        yield tmp


def load_npz(path: str | os.PathLike, **kwargs):
    """`np.load` of a local or remote `.npz`/`.npy` (a remote one is read whole into memory)."""
    import numpy as np

    return np.load(path if not is_remote(path) else io.BytesIO(read_bytes(path)), **kwargs)


def remove(path: str | os.PathLike) -> None:
    """Delete a file if it exists."""
    if not is_remote(path):
        Path(path).unlink(missing_ok=True)
        return
    fs, p = fs_path(path)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(p)


def rmtree(folder: str | os.PathLike) -> None:
    """Delete a folder (every object under a prefix) if it exists."""
    if not is_remote(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return
    fs, p = fs_path(folder)
    if fs.exists(p):
        fs.rm(p, recursive=True)
    fs.invalidate_cache(p)


def makedirs(folder: str | os.PathLike) -> None:
    """Make a local folder (and its parents); nothing for object storage (prefixes need no making)."""
    if not is_remote(folder):
        Path(folder).mkdir(parents=True, exist_ok=True)


def task_env() -> dict[str, str]:
    """The driver's object-storage settings (AWS_*, FSSPEC_*, …) to hand to Ray workers, so a task connects to the
    same store as the driver; {} when none are set."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


# --- the folder lock on object storage -------------------------------------------------------------------------


def lock(folder: str | os.PathLike) -> None:
    """Lock `folder` for the rest of the process: `disk.lock_folder` for a local one; on object storage a
    `<folder>/.lock` object created only if absent (see the module docstring). Raises `disk.FolderInUse`."""
    if not is_remote(folder):
        disk.lock_folder(folder)
        return
    key = str(folder).rstrip("/")
    with _registry:
        if key in _locks:
            return
        path = join(key, disk.LOCK_FILE)
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        if not _create(path, me):
            holder = _holder(path)
            if holder != me and not _stale(holder, me):
                raise disk.FolderInUse(
                    f"{key} is in use by another mithridate run (host {holder.get('host', '?')}, pid "
                    f"{holder.get('pid', '?')}); wait for it, or, if that run is dead, delete {path}, or choose "
                    "another --out") from None
            logger.warning("%s: taking over the lock of a run that is gone (%s)", key, holder)
            write_text(path, json.dumps(me))
        _locks[key] = path
        if len(_locks) == 1:
            atexit.register(release_all)


def _create(path: str, content: dict) -> bool:
    """Create `path` only if absent (a conditional PUT); False when it exists."""
    fs, p = fs_path(path)
    data = json.dumps(content).encode()
    try:
        fs.pipe_file(p, data, mode="create")
    except FileExistsError:
        return False
    except (TypeError, NotImplementedError):  # a filesystem without conditional writes: check, then write
        logger.warning("%s: this store cannot create an object only if absent; the lock is best effort", path)
        if fs.exists(p):
            return False
        fs.pipe_file(p, data)
    return True


def _holder(path: str) -> dict:
    try:
        return json.loads(read_text(path))
    except (OSError, ValueError):
        return {}


def _stale(holder: dict, me: dict) -> bool:
    """A lock of this host whose process is gone (a killed run), or an unreadable one."""
    if not holder:
        return True
    if holder.get("host") != me["host"]:
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except (ProcessLookupError, ValueError):
        return True
    except PermissionError:
        return False
    return False


def release(folder: str | os.PathLike) -> None:
    """Give up this process's lock of a remote folder (a local folder's flock goes with the process)."""
    key = str(folder).rstrip("/")
    with _registry:
        path = _locks.pop(key, None)
    if path is not None:
        with contextlib.suppress(Exception):
            remove(path)


def release_all() -> None:
    """Give up every lock object this process holds (at exit)."""
    for key in list(_locks):
        release(key)
