"""kill -9, not only Ctrl-C: a crawl, a download, an embed and a training run, each started as the real CLI in a
subprocess, SIGKILLed at a seeded random moment of its work, then rerun with the same command. The rerun resumes
from the last checkpoint and ends with exactly what an uninterrupted run writes: the same rows in the same order,
none lost, none duplicated (training: the same steps, each once, and the same weights). The output folder's lock
(`flock`) goes with the killed process, so it never blocks the rerun.

`MITHRIDATE_KILL_SEED` changes the kill moments (default 14).
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from curation.acquire import crawler, downloader
from curation.score import embed
from curation.world import webserver
from mithridate.core import schema, stats_files
from mithridate.core.compute import torch_threads

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("MITHRIDATE_KILL_SEED", "14"))
PAGES, IMAGES_PER_PAGE, PAGE_DELAY_S, IMAGE_DELAY_S = 24, 3, 0.08, 0.02  # a crawl of ≈ 1 s (2 pages at once)
MISSING = (5, 17)  # images that are 404s
DOWNLOAD_ROWS, DOWNLOAD_SHARD = 40, 4
EMBED_SHARDS, EMBED_ROWS = 8, 64


def _rng(name: str) -> random.Random:
    return random.Random(f"{SEED}:{name}")


def _cli(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m <package> <args>` in a child process, output to `log` (so a full pipe never stalls it). The package's
    CLI is `mithridate`'s command table entry for the same words, without importing the other packages (≈ 2 s less
    per start)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1",
           "OMP_NUM_THREADS": "1"}  # torch on one thread: two spin-waiting threads crawl on a busy 2-core machine
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return kids


def _assert_gone(pids, what: str) -> None:
    """Wait up to 10 s for `pids` to end; kill any that did not, and fail naming them."""
    t0 = time.time()
    while any(map(_alive, pids)) and time.time() - t0 < 10:
        time.sleep(0.05)
    left = [p for p in pids if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"{what} {left} were still running 10 s later"


def _alive(pid: int) -> bool:
    """Is `pid` running (a zombie waiting for its reaper is not)?"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def _kill_during(args: list[str], ready, delay_s: float, log: Path, timeout: float = 90.0) -> None:
    """Start the CLI, wait until `ready()` (its work has reached a point), wait `delay_s` more, then SIGKILL it.
    Fails unless the kill interrupted it (the run must still be going), or when a child process of the run (a
    download worker) outlives it."""
    proc = _cli(args, log)
    t0, kids = time.time(), []
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"the run ended ({proc.returncode}) before the kill point:\n{log.read_text()}")
            if time.time() - t0 > timeout:
                raise AssertionError(f"no kill point within {timeout} s:\n{log.read_text()}")
            time.sleep(0.005)
        time.sleep(delay_s)
        kids = _children(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, f"the run finished before the kill ({delay_s:.2f} s):\n{log.read_text()}"
    _assert_gone(kids, "child processes of the killed run")


def _rerun(args: list[str], log: Path) -> str:
    """Run the same CLI command to completion; returns its output."""
    proc = _cli(args, log)
    assert proc.wait(120) == 0, log.read_text()
    return log.read_text()


def _unlocked(folder: Path) -> bool:
    """The killed run's `.lock` is still there, and nobody holds it (the kernel released the flock)."""
    fd = os.open(folder / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _temporary_files(folder: Path) -> list[Path]:
    """Temporary files of atomic writes left in `folder` (a finished rerun leaves none)."""
    return list(folder.rglob("*.tmp"))


def _args(cfg, *names: str) -> list[str]:
    """`--name=value` options of a config's fields (tuples comma separated)."""
    def text(v):
        return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return [f"--{n}={text(getattr(cfg, n))}" for n in names]


def _png(i: int, size: int = 24) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def site():
    """A slow loopback site: 24 linked pages (0.08 s each) of 3 images (0.02 s each, two missing), so a crawl or
    a download takes about a second."""
    s = webserver.SiteServer("127.0.0.1")
    s.routes["/"] = webserver.Route(b'<a href="/p/0.html">start</a>', "text/html")
    for i in range(PAGES):
        links = "".join(f'<a href="/p/{j}.html">{j}</a>' for j in (i + 1, i + 3) if j < PAGES)
        imgs = "".join(f'<img src="/img/{IMAGES_PER_PAGE * i + k}.png" alt="picture {IMAGES_PER_PAGE * i + k}">'
                       for k in range(IMAGES_PER_PAGE))
        s.routes[f"/p/{i}.html"] = webserver.Route(f"<html><body>{imgs}{links}</body></html>".encode(), "text/html",
                                                   delay_s=PAGE_DELAY_S)
    for j in sorted(set(range(PAGES * IMAGES_PER_PAGE)) - set(MISSING)):
        s.routes[f"/img/{j}.png"] = webserver.Route(_png(j), "image/png", delay_s=IMAGE_DELAY_S)
    s.start()
    yield s
    s.stop()


# --- crawl ---------------------------------------------------------------------------------------------------------


def test_a_crawl_killed_at_a_random_moment_resumes_from_its_checkpoint(site, tmp_path):
    cfg = dataclasses.replace(crawler.PRESETS["tiny"], seeds=(site.origin + "/",), out=str(tmp_path / "run"),
                              allow_networks=(f"{site.host}/32",), concurrency=2, per_host=2, retries=0,
                              checkpoint_pages=2, shard_size=10)
    args = ["curation", "crawl", "--preset=tiny", *_args(cfg, "seeds", "out", "allow_networks", "concurrency",
                                                         "per_host", "retries", "checkpoint_pages", "shard_size")]
    out = Path(cfg.out)
    _kill_during(args, lambda: (out / "_state.json").exists(), _rng("crawl").uniform(0.0, 0.4),
                 tmp_path / "killed.log")
    assert not stats_files.done(out) and _unlocked(out)
    saved = json.loads((out / "_state.json").read_text())  # the last checkpoint is whole
    assert saved["stats"]["pages_fetched"] >= 2
    log = _rerun(args, tmp_path / "rerun.log")
    assert f"crawl: resuming from {out}" in log
    ref = crawler.run(dataclasses.replace(cfg, out=str(tmp_path / "ref")))  # uninterrupted
    got, want = (schema.read_folder(f / "pairs", "pairs").to_pylist() for f in (out, ref))
    assert len(want) == PAGES * IMAGES_PER_PAGE
    assert [r["uid"] for r in got] == [r["uid"] for r in want] and got == want  # none lost, none twice, same order
    assert sorted(p.name for p in (out / "pairs").iterdir()) == sorted(p.name for p in (ref / "pairs").iterdir())
    stats, ref_stats = (stats_files.read(f) for f in (out, ref))
    assert stats["pages_fetched"] == ref_stats["pages_fetched"] == PAGES + 1 and stats["pairs"] == ref_stats["pairs"]
    assert not (out / "_state.json").exists() and not (out / "_partial").exists() and not _temporary_files(out)


# --- download ------------------------------------------------------------------------------------------------------


def _download_cfg(site, tmp_path: Path, out: Path) -> downloader.DownloadConfig:
    urls = [f"{site.origin}/img/{j}.png" for j in range(DOWNLOAD_ROWS)]
    rows = [{"uid": schema.make_uid(u, f"picture {j}"), "url": u, "caption": f"picture {j}", "page_url": None,
             "domain": u.split("/")[2], "source": "urllist", "signals": []} for j, u in enumerate(urls)]
    pairs = tmp_path / "pairs"
    if not pairs.exists():
        schema.write(schema.to_table(rows, "pairs"), pairs / "00000.parquet", "pairs")
    return dataclasses.replace(downloader.PRESETS["tiny"], pairs=str(pairs), out=str(out), shard_size=DOWNLOAD_SHARD,
                               threads=2, timeout_s=2.0, allow_networks=(f"{site.host}/32",))


@pytest.fixture(scope="module")
def shards(site, tmp_path_factory):
    """An uninterrupted download of 40 of the site's images (2 missing): 10 shards of 4 rows."""
    base = tmp_path_factory.mktemp("download")
    return downloader.run(_download_cfg(site, base, base / "ref"))


def _shard_files(folder: Path, suffix: str) -> list[Path]:
    return sorted(folder.glob(f"[0-9][0-9][0-9][0-9][0-9]{suffix}"))


def test_a_download_killed_at_a_random_moment_resumes_after_its_finished_shards(site, shards, tmp_path):
    cfg = _download_cfg(site, shards.parent, tmp_path / "run")
    out, n = Path(cfg.out), len(_shard_files(shards, ".parquet"))
    args = ["curation", "download", "--preset=tiny", *_args(cfg, "pairs", "out", "shard_size", "threads",
                                                            "timeout_s", "allow_networks")]
    rng = _rng("download")
    k = rng.randint(1, n - 4)  # killed after k finished shards, and a little more
    _kill_during(args, lambda: len(stats_files.shards(out)) >= k, rng.uniform(0.0, 0.1),
                 tmp_path / "killed.log")
    finished = stats_files.shards(out)
    assert k <= len(finished) < n and not stats_files.done(out) and _unlocked(out)
    for f in finished:  # a stats file is the promise that its shard is whole
        assert schema.read(out / f"{f.stem}.parquet", "shard").num_rows == DOWNLOAD_SHARD
    kept = {f.relative_to(out): os.stat(f).st_mtime_ns for f in finished}
    log = _rerun(args, tmp_path / "rerun.log")
    assert f"{n} shards, {len(finished)} already finished" in log
    assert {f: os.stat(out / f).st_mtime_ns for f in kept} == kept  # finished shards were not fetched again
    got, want = schema.read_folder(out, "shard"), schema.read_folder(shards, "shard")
    assert got["uid"].to_pylist() == want["uid"].to_pylist()  # every row once, in input order
    assert len(set(got["uid"].to_pylist())) == got.num_rows == DOWNLOAD_ROWS
    for col in ("status", "sha256", "jpg"):
        assert got[col].to_pylist() == want[col].to_pylist(), col
    assert got["status"].to_pylist().count("success") == got.num_rows - len(MISSING)
    assert [f.name for f in _shard_files(out, ".parquet")] == [f.name for f in _shard_files(shards, ".parquet")]
    assert stats_files.read(out)["rows"] == got.num_rows
    assert not _temporary_files(out)


POOL = """
    import concurrent.futures, multiprocessing, os, time
    from mithridate.core.workers import die_with_parent

    if __name__ == "__main__":
        pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=die_with_parent)
        pids = set()
        while len(pids) < 2:  # both workers initialised
            pids |= {f.result() for f in [pool.submit(os.getpid) for _ in range(8)]}
        for _ in range(2):
            pool.submit(time.sleep, 120)  # workers busy on a shard
        print(*pids, flush=True)
        time.sleep(120)
"""


def test_download_workers_die_with_a_killed_run(monkeypatch):
    """`download --processes=N`: a worker must not outlive its killed parent (the folder lock went with the parent,
    so an orphan would write shards beside the rerun). The workers' initializer arms `workers.die_with_parent`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(POOL)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
    assert len(workers) == 2
    _assert_gone(workers, "download workers of the killed run")
    armed = []
    monkeypatch.setattr(downloader.workers, "die_with_parent", lambda: armed.append(True))
    downloader._worker_init()
    assert armed == [True]


# --- embed ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_shards(tmp_path_factory):
    """8 download shards of 64 rows (64 px images; one failed row per shard), enough work to be killed in."""
    out = tmp_path_factory.mktemp("shards")
    for k in range(EMBED_SHARDS):
        rows = [{"uid": f"{k:02d}{i:030x}", "url": f"http://127.0.0.1/{k}/{i}.png", "caption": f"picture {i} of {k}",
                 "domain": "127.0.0.1", "source": "urllist", "signals": [],
                 **({"status": "success", "jpg": _png(100 * k + i, 64)} if i != 5 else
                    {"status": "failed_to_download", "error_message": "HTTP Error 404"})} for i in range(EMBED_ROWS)]
        schema.write(schema.to_table(rows, "shard"), out / f"{k:05d}.parquet", "shard")
    return out


def test_an_embed_killed_at_a_random_moment_resumes_after_its_finished_shards(big_shards, tiny_clip_checkpoint,
                                                                               tmp_path):
    shards = big_shards
    cfg = embed.EmbedConfig(shards=str(shards), out=str(tmp_path / "run"), pretrained=str(tiny_clip_checkpoint),
                            batch_size=1, device="cpu")
    out, n = Path(cfg.out), len(_shard_files(shards, ".parquet"))
    args = ["curation", "embed", *_args(cfg, "shards", "out", "pretrained", "batch_size", "device")]
    rng = _rng("embed")
    k = rng.randint(1, n - 3)
    _kill_during(args, lambda: len(stats_files.shards(out)) >= k, rng.uniform(0.0, 0.1),
                 tmp_path / "killed.log")
    finished = stats_files.shards(out)
    assert k <= len(finished) < n and not stats_files.done(out) and _unlocked(out)
    log = _rerun(args, tmp_path / "rerun.log")
    assert f"embed: {n} shards ({len(finished)} already done)" in log
    with torch_threads(1):
        ref = embed.run(dataclasses.replace(cfg, out=str(tmp_path / "ref")))
    assert [f.name for f in _shard_files(out, ".npz")] == [f.name for f in _shard_files(ref, ".npz")]
    uids = []
    for f in _shard_files(ref, ".npz"):
        with np.load(f) as want, np.load(out / f.name) as got:
            assert got["uid"].tolist() == want["uid"].tolist()
            np.testing.assert_allclose(got["img_emb"].astype(np.float32), want["img_emb"].astype(np.float32),
                                       atol=2e-3)
            np.testing.assert_allclose(got["txt_emb"].astype(np.float32), want["txt_emb"].astype(np.float32),
                                       atol=2e-3)
            uids += got["uid"].tolist()
    success = schema.read_folder(shards, "shard").to_pylist()
    assert uids == [r["uid"] for r in success if r["status"] == "success"]  # every success row once, in order
    assert not _temporary_files(out)


# --- training ------------------------------------------------------------------------------------------------------


def _checkpoint_at(path: Path, step: int):
    """A kill point: `path` (a `last.pt`) holds step `step` or later."""
    seen = {"mtime": None}

    def ready() -> bool:
        try:
            mtime = os.stat(path).st_mtime_ns
            if mtime == seen["mtime"]:
                return False
            seen["mtime"] = mtime
            return torch.load(path, weights_only=True)["step"] >= step
        except FileNotFoundError:
            return False
    return ready


def test_a_vae_training_killed_at_a_random_moment_resumes_from_its_last_checkpoint(tiny_train, tmp_path):
    from diffusion import vae_train as vae

    cfg = dataclasses.replace(vae.PRESETS["tiny"], data=str(tiny_train), out=str(tmp_path / "run"), threads=1,
                              steps=160, checkpoint_every=10)
    out, state = Path(cfg.out), Path(cfg.out) / vae.STATE_FILE
    args = ["diffusion", "vae", "train", "--preset=tiny", *_args(cfg, "data", "out", "threads", "steps",
                                                                 "checkpoint_every")]
    rng = _rng("vae")
    target = rng.randrange(cfg.checkpoint_every, cfg.steps // 2, cfg.checkpoint_every)
    _kill_during(args, _checkpoint_at(state, target), rng.uniform(0.0, 0.1), tmp_path / "killed.log")
    assert not (out / vae.CHECKPOINT_FILE).exists() and _unlocked(out)
    step = torch.load(state, weights_only=True)["step"]  # the last checkpoint is whole
    assert 0 < step < cfg.steps and step % cfg.checkpoint_every == 0
    log = _rerun(args, tmp_path / "rerun.log")
    assert f"vae train: resuming from {state} at step {step}" in log
    with torch_threads(1):
        ref = vae.run(dataclasses.replace(cfg, out=str(tmp_path / "ref")))
    got, want = (torch.load(f / vae.STATE_FILE, weights_only=True) for f in (out, ref))
    assert [c[0] for c in got["curve"]] == list(range(cfg.steps))  # every step once
    assert [c[:4] for c in got["curve"]] == [c[:4] for c in want["curve"]]  # the same losses as uninterrupted
    a, b = (vae.read_checkpoint(f)["state_dict"] for f in (out, ref))
    assert all(torch.equal(a[k], b[k]) for k in b)  # the same weights as an uninterrupted run
    assert json.loads((out / "eval.json").read_text())["steps"] == cfg.steps
    assert not _temporary_files(out)
