"""Reliability: concurrent runs on one folder, corrupt shards, truncated checkpoints, a full disk, and a run killed
mid-way then rerun. Each failure is a one-line error naming the file and what to do."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from curation.acquire import downloader
from curation.score import encoders
from curation.world import webserver
from mithridate.core import checkpoints, disk, options, schema, stats_files
from mithridate.core.compute import torch_threads

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class _Cfg:
    seed: int = 0


def _python(code: str, *args: str) -> subprocess.Popen:
    """A child Python in the repository root running `code` with `sys.argv[1:] == args` (output to one pipe)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child ended ({proc.returncode}) before {path} appeared:\n{proc.stdout.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close()


# --- 1. one run per output folder ------------------------------------------------------------------------------------


LOCKER = """
    import sys, time
    from dataclasses import dataclass
    from mithridate.core import options

    @dataclass(frozen=True)
    class C:
        seed: int = 0

    options.write_config(C(), sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_process_is_refused_and_a_killed_run_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    child = _python(LOCKER, str(out))
    try:
        assert any(line.strip() == "locked" for line in child.stdout), "the child ended without locking"
        with pytest.raises(disk.FolderInUse) as err:
            options.write_config(_Cfg(), out)
        assert str(err.value) == (f"{out} is in use by another mithridate run (pid {child.pid}); wait for it or "
                                  "choose another --out")
        assert isinstance(err.value, ValueError)  # the CLI prints it as one line
    finally:
        _kill(child)
    assert (out / ".lock").is_file()  # the file stays, the lock went with the process
    assert options.write_config(_Cfg(), out) == out / "config.json"


def test_the_same_process_may_write_its_folder_again_and_a_recreated_folder_is_locked_anew(tmp_path):
    out = tmp_path / "run"
    options.write_config(_Cfg(), out)
    options.write_config(_Cfg(), out)  # a rerun in the same process
    options.write_config(_Cfg(), out / "stage")  # a stage's sub-folder
    options.check_resumable(_Cfg(), out)  # the lock file is not a sign of another run
    shutil.rmtree(out)  # the demo starts its stage folders afresh
    options.write_config(_Cfg(), out)
    child = _python(LOCKER, str(out))  # the new folder's lock is this process's
    text, _ = child.communicate(timeout=60)
    assert child.returncode == 1 and "locked" not in text
    assert f"FolderInUse: {out} is in use by another mithridate run (pid {os.getpid()})" in text


# --- 2. corrupt shards ---------------------------------------------------------------------------------------------


def _shard_rows(n: int) -> list[dict]:
    return [{"uid": f"{i:032x}", "url": f"http://127.0.0.1/{i}.png", "caption": f"pic {i}", "source": "urllist",
             "signals": [], "status": "failed_to_download", "error_message": "HTTP Error 404"} for i in range(n)]


@pytest.mark.parametrize("kind", ["truncated", "random"])
def test_a_corrupt_shard_names_the_file_and_how_to_refetch_it(tmp_path, kind):
    path = schema.write(schema.to_table(_shard_rows(50), "shard"), tmp_path / "00003.parquet", "shard")
    schema.write(schema.to_table(_shard_rows(5), "shard"), tmp_path / "00004.parquet", "shard")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if kind == "truncated" else os.urandom(len(data)))
    for read in (lambda: schema.read(path, "shard"), lambda: schema.read_folder(tmp_path, "shard")):
        with pytest.raises(ValueError) as err:
            read()
        msg = str(err.value)
        assert type(err.value) is ValueError and "\n" not in msg
        assert msg.startswith(f"{path}: not a readable parquet file (")
        assert msg.endswith(f"it is truncated or corrupt: delete it and {stats_files.path(tmp_path, '00003')}, then rerun "
                            "`download` to fetch it again")


# --- 3. truncated checkpoints ----------------------------------------------------------------------------------------


def _truncate(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _one_line(fn, *needles: str) -> str:
    with pytest.raises(ValueError) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg and "truncated or not a mithridate checkpoint" in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def test_a_truncated_clip_checkpoint_is_a_clear_error(tiny_clip_checkpoint, tmp_path):
    bad = _truncate(tiny_clip_checkpoint, tmp_path / "clip" / "clip.pt")
    _one_line(lambda: encoders.load_compact(bad, "cpu"), f"{bad}: not a readable torch checkpoint",
              "delete it and rerun `mithridate clip train`")
    (tmp_path / "junk.pt").write_bytes(os.urandom(4000))
    _one_line(lambda: encoders.load_compact(tmp_path / "junk.pt", "cpu"), "junk.pt")


def test_a_truncated_vae_checkpoint_is_a_clear_error(tmp_path):
    from diffusion import vae_train as vae

    cfg = vae.PRESETS["tiny"]
    (tmp_path / "ok").mkdir()
    vae.save_vae(vae.build_model(cfg), cfg, {}, tmp_path / "ok" / "vae.pt")
    assert vae.load_vae(tmp_path / "ok").factor == 4
    bad = _truncate(tmp_path / "ok" / "vae.pt", tmp_path / "bad" / "vae.pt")
    _one_line(lambda: vae.load_vae(tmp_path / "bad"), f"{bad}: not a loadable torch checkpoint",
              "delete it and rerun `mithridate vae train`")


# --- 4. a full disk --------------------------------------------------------------------------------------------------


def _no_space(*args, **kwargs):
    target = args[1]
    if hasattr(target, "write"):
        target.write(b"half a file")
    else:
        Path(target).write_bytes(b"half a file")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_writing_a_shard_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "shards" / "00000.parquet"
    monkeypatch.setattr(pq, "write_table", _no_space)
    with pytest.raises(disk.DiskFull) as err:
        schema.write(schema.to_table(_shard_rows(3), "shard"), path, "shard")
    assert str(err.value) == (f"{path}: no space left on device; the partial file was removed — free some space (or "
                              "choose another output folder) and rerun")
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, ValueError)
    assert list(path.parent.iterdir()) == []  # neither the shard nor its temporary file


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = checkpoints.save({"step": 10}, tmp_path / "last.pt")
    monkeypatch.setattr(torch, "save", _no_space)
    with pytest.raises(disk.DiskFull, match=rf"^{path}: no space left on device"):
        checkpoints.save({"step": 20}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert torch.load(path, weights_only=True) == {"step": 10}


def test_a_full_disk_while_writing_the_config(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(disk.DiskFull, match=rf"^{tmp_path / 'config.json'}: no space left on device"):
        options.write_config(_Cfg(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


# --- 5. killed mid-way, rerun: resumes and loses nothing -----------------------------------------------------------


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), ((i * 40) % 256, (i * 90) % 256, (i * 20) % 256)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def small_web(tmp_path):
    """12 PNGs on a loopback site (one a 404) and their pairs: three download shards of 4 rows."""
    site = webserver.SiteServer("127.0.0.1")
    for i in range(11):
        site.routes[f"/img/{i}.png"] = webserver.Route(_png(i), "image/png")
    site.start()
    urls = [f"{site.origin}/img/{i}.png" for i in range(12)]
    rows = [{"uid": schema.make_uid(u, f"picture {i}"), "url": u, "caption": f"picture {i}", "page_url": None,
             "domain": u.split("/")[2], "source": "urllist", "signals": []} for i, u in enumerate(urls)]
    schema.write(schema.to_table(rows, "pairs"), tmp_path / "pairs" / "00000.parquet", "pairs")
    yield site, tmp_path / "pairs", [r["uid"] for r in rows]
    site.stop()


DOWNLOAD_CHILD = """
    import json, sys, time
    from curation.acquire import downloader

    real = downloader._fetch

    def fetch_then_hang(cfg, shard_id, *args, **kwargs):
        got = real(cfg, shard_id, *args, **kwargs)
        if shard_id == 1:  # shard 1's images are fetched, its shard not written: killed here
            print("hanging", flush=True)
            time.sleep(300)
        return got

    downloader._fetch = fetch_then_hang
    kw = json.loads(sys.argv[1])
    downloader.run(downloader.DownloadConfig(**{**kw, "allow_networks": tuple(kw["allow_networks"])}))
"""


def test_a_download_killed_mid_shard_resumes_without_refetching_or_losing_rows(small_web, tmp_path):
    site, pairs, uids = small_web
    cfg = downloader.DownloadConfig(pairs=str(pairs), out=str(tmp_path / "shards"), shard_size=4, threads=4,
                                    timeout_s=2.0, allow_networks=(f"{site.host}/32",))
    out = Path(cfg.out)
    kw = {k: getattr(cfg, k) for k in ("pairs", "out", "shard_size", "threads", "timeout_s", "allow_networks")}
    child = _python(DOWNLOAD_CHILD, json.dumps(kw))
    try:
        _wait_for(stats_files.path(out, "00000"), child)
        assert any("hanging" in line for line in child.stdout), "the child ended before shard 1"
        with pytest.raises(disk.FolderInUse, match=rf"in use by another mithridate run \(pid {child.pid}\)"):
            downloader.run(cfg)
    finally:
        _kill(child)
    assert (out / "_tmp" / "00001").is_dir() and not (out / "00001.parquet").exists()
    done = {f: os.stat(out / f).st_mtime_ns for f in ("00000.parquet", "__stats__/00000.json")}
    downloader.run(cfg)
    shards = schema.read_folder(out, "shard")
    assert shards["uid"].to_pylist() == uids  # every row once, in input order
    assert shards["status"].to_pylist() == ["success"] * 11 + ["failed_to_download"]
    assert {f: os.stat(out / f).st_mtime_ns for f in done} == done  # the finished shard was not refetched
    assert stats_files.read(out)["rows"] == 12


@pytest.fixture(scope="module")
def tiny_vae(tiny_train, tmp_path_factory):
    from diffusion import vae_train as vae

    with torch_threads(1):
        return vae.run(dataclasses.replace(vae.PRESETS["tiny"], data=str(tiny_train),
                                           out=str(tmp_path_factory.mktemp("vae"))))


def _train_cfg(tiny_train, tiny_vae, clip, out):
    from diffusion import training

    return dataclasses.replace(training.PRESETS["tiny"], data=str(tiny_train), vae=str(tiny_vae), clip=str(clip),
                               out=str(out), concepts=("cat", "house", "anchor", "dog"))


TRAIN_CHILD = """
    import dataclasses, json, sys, time
    import torch
    from diffusion import training

    torch.set_num_threads(1)
    real = training.save_state

    def save_then_hang(st, path):
        real(st, path)
        print("saved", st.step, flush=True)
        time.sleep(300)  # killed here, after the first last.pt

    training.save_state = save_then_hang
    kw = json.loads(sys.argv[1])
    training.run(dataclasses.replace(training.PRESETS["tiny"], **{**kw, "concepts": tuple(kw["concepts"])}))
"""


@pytest.fixture(scope="module")
def resumed_training(tiny_train, tiny_vae, tiny_clip_checkpoint, tmp_path_factory):
    """A tiny diffusion run SIGKILLed after its first `last.pt` (step 10 of 30), then rerun in this process."""
    from diffusion import training

    cfg = _train_cfg(tiny_train, tiny_vae, tiny_clip_checkpoint, tmp_path_factory.mktemp("dif") / "run")
    kw = {k: getattr(cfg, k) for k in ("data", "vae", "clip", "out", "concepts")}
    child = _python(TRAIN_CHILD, json.dumps(kw))
    try:
        _wait_for(Path(cfg.out) / "last.pt", child)
        assert any("saved 10" in line for line in child.stdout), "the child ended without saving"
        with pytest.raises(disk.FolderInUse, match=rf"\(pid {child.pid}\)"):
            training.run(cfg)
    finally:
        _kill(child)
    assert torch.load(Path(cfg.out) / "last.pt", weights_only=True)["step"] == 10
    logs, logger = _Records(), logging.getLogger("diffusion.training")
    level = logger.level
    logger.addHandler(logs)
    logger.setLevel(logging.INFO)
    try:
        with torch_threads(1):
            return cfg, training.run(cfg), logs.messages
    finally:
        logger.removeHandler(logs)
        logger.setLevel(level)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_training_run_killed_after_a_checkpoint_resumes_from_it(resumed_training):
    from diffusion import pipeline

    cfg, out, messages = resumed_training
    assert f"resuming {out / 'last.pt'} at step 10 of 30" in messages
    assert json.loads((out / "train.json").read_text())["steps"] == 30
    steps = [int(float(line.split(",")[0])) for line in (out / "curve.csv").read_text().splitlines()[1:]]
    assert steps == list(range(30))  # the killed run's 10 steps kept, 20 more trained
    assert pipeline.read_checkpoint(out)["summary"]["steps"] == 30


def test_a_truncated_model_checkpoint_is_a_clear_error(resumed_training, tmp_path):
    from diffusion.pipeline import Pipeline

    _, out, _ = resumed_training
    bad = _truncate(out / "model.pt", tmp_path / "dif" / "model.pt")
    _one_line(lambda: Pipeline.load(tmp_path / "dif", "cpu"), f"{bad}: not a readable torch checkpoint",
              "delete it and rerun `mithridate train` to retrain")


def test_a_truncated_last_pt_stops_the_resume_instead_of_starting_over(resumed_training, tiny_vae, tmp_path, capsys):
    from diffusion import training
    from mithridate.cli import main

    cfg, out, _ = resumed_training
    fresh = dataclasses.replace(cfg, out=str(tmp_path / "dif"))
    bad = _truncate(out / "last.pt", tmp_path / "dif" / "last.pt")
    with torch_threads(1):
        _one_line(lambda: training.run(fresh), f"{bad}: not a readable training state", "train from step 0")
        assert not (tmp_path / "dif" / "model.pt").exists()
        shutil.copy(tiny_vae / "last.pt", bad)  # a readable file, but another model's state
        lacks = r"\(lacks \['ema', 'opt', 'gen', 'total'\]\); delete it"
        with pytest.raises(ValueError, match=rf"^{bad}: not a diffusion training state {lacks}"):
            training.run(fresh)
        _truncate(out / "last.pt", bad)
        argv = ["train", "--preset=tiny", f"--data={cfg.data}", f"--vae={cfg.vae}", f"--clip={cfg.clip}",
                f"--out={fresh.out}", f"--concepts={','.join(cfg.concepts)}"]
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mithridate: error: {bad}: not a readable training state")


def test_a_truncated_vae_training_state_is_a_clear_error(tiny_vae, tmp_path):
    from diffusion import vae_train as vae

    cfg = dataclasses.replace(_saved_config(tiny_vae, vae.VaeTrainConfig), out=str(tmp_path / "vae"))
    bad = _truncate(tiny_vae / "last.pt", tmp_path / "vae" / "last.pt")
    with torch_threads(1):
        _one_line(lambda: vae.run(cfg), f"{bad}: not a loadable training state", "delete it to train from step 0")


def _saved_config(folder: Path, cls: type):
    """The config a run folder's `config.json` records."""
    saved = json.loads((folder / "config.json").read_text())
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in names})
