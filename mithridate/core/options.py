"""Stage configs as frozen dataclasses: presets, `--field=value` overrides, a generated CLI and `config.json`.

A stage declares `@dataclass(frozen=True) class XConfig` whose fields are made with `opt(default, "help")`.
`add_arguments` turns the fields into argparse options (Literal fields get `choices=`), and `resolve`
applies a preset and then the overrides, checking each value against the field's type.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from mithridate.core import storage

logger = logging.getLogger(__name__)


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


def from_dict(cls: type, saved: dict[str, Any]) -> Any:
    """The inverse of `to_dict`: a `cls` from a saved config (fields `cls` lacks are dropped, lists become tuples)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in names})


def write_config(cfg: Any, folder: str | Path, name: str = "config.json") -> Path | str:
    """Lock `folder` (see `disk.lock_folder`; on object storage `storage.lock`) and write the resolved config to
    `<folder>/config.json` (the first act of every stage)."""
    storage.makedirs(folder)
    storage.lock(folder)
    return storage.write_text(storage.join(folder, name),
                              json.dumps(to_dict(cfg), indent=2, sort_keys=True, default=str) + "\n")


def check_resumable(cfg: Any, folder: str | Path, runtime_fields: tuple[str, ...] = ()) -> None:
    """Refuse to resume into `folder` when its `config.json` came from a different config.

    Fields in `runtime_fields` (threads, processes, …) may differ: they change speed, not results. A field the saved
    config lacks (added to the stage since) counts as its default: a folder of an older version resumes.
    """
    path = storage.join(folder, "config.json")
    if not storage.exists(path):
        return
    try:
        old = json.loads(storage.read_text(path))
    except json.JSONDecodeError:
        raise ValueError(f"{path}: not valid JSON; delete the folder or choose another output folder") from None
    new = json.loads(json.dumps(to_dict(cfg), default=str))
    defaults = json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(cfg)
                                      if f.default is not dataclasses.MISSING}, default=str))
    old = {**{k: v for k, v in defaults.items() if k not in old}, **old}
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
