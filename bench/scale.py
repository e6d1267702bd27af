"""Scale benchmark: the filter stage's dedup passes and the whole filter stage, local vs a local Ray cluster, at
growing row counts; and a download of loopback images on both engines.

    python bench/scale.py                                    # dedup 100k, 300k, 1M; filter 20k, 60k; download 20k
    python bench/scale.py --dedup 100000 --filter 0 --download 0 --out /tmp/scale
    python bench/scale.py --cpus 16 --dedup 100000,300000,1000000,3000000

Parts (each measurement in a fresh subprocess, so each peak RSS is that run's driver alone; on Ray the workers and
the object store are other processes and are not counted):

- dedup: synthetic key rows (uid, sha256, 64-bit pHash, 128-D float16 unit embedding) with planted duplicates (1% exact
  copies, 1% pHash copies 1-4 bits away, 1% embedding copies at cosine ≈ 0.9975), written as the Ray engine's key
  files. local = the three layers of `filtering.dedup_reasons` (`dedup.exact_duplicates`, `phash_duplicates`,
  `semantic_duplicates`) on arrays in the process; ray = `ray_filter.global_dedup` on the key files (Ray Data
  group-bys; the driver holds the duplicates, the pHash edges and the k-means sample). Both must flag the same rows
  with the same `duplicate_of` (checked).
- filter: `filtering.run` end to end on synthetic download shards (tiny distinct PNGs, captions, embeddings with
  the same planted copies), both engines into one folder (engine is a runtime field), outputs compared byte for
  byte (keep.npy) and row for row (decisions.parquet). The pHash of every image is decoded (≈ 0.2 ms each).
- download: `mt.download` of N loopback PNGs (one `SiteServer` on 127.0.0.1) with engine local and ray.

Prints a table (rows, engine, seconds, peak driver RSS) and the cost growth exponent b of seconds ∝ rowsᵇ (least
squares over the sizes); `--out` keeps the data and writes `results.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/scale.py` from anywhere
    sys.path.insert(0, str(REPO))

DIM = 128
SHARD_ROWS = 20_000


def _rss_mib() -> float:
    """This process's peak resident memory: VmHWM (reset by exec; `ru_maxrss` would carry over the parent's peak
    from before the fork), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# --- synthetic data ---------------------------------------------------------------------------------------------

def planted(n: int, seed: int) -> dict:
    """uids, sha256s, pHashes (ints) and float16 embeddings of n rows; 1% each exact, pHash and embedding copies."""
    rng = np.random.default_rng(seed)
    uids = np.array([f"{int(a):016x}{int(b):016x}" for a, b in rng.integers(0, 2**63, size=(n, 2))], dtype=object)
    sha = rng.integers(0, 2**63, size=(n, 4))
    ph = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    emb = rng.standard_normal((n, DIM), dtype=np.float32)
    c = max(1, n // 100)
    rows = rng.permutation(n)[: 6 * c].reshape(6, c)
    sha[rows[1]] = sha[rows[0]]  # exact copies (same bytes: same pHash and embedding too)
    ph[rows[1]], emb[rows[1]] = ph[rows[0]], emb[rows[0]]
    flips = np.bitwise_or.reduce(np.uint64(1) << rng.integers(0, 64, size=(c, 4)).astype(np.uint64), axis=1)
    ph[rows[3]] = ph[rows[2]] ^ flips  # pHash copies within 4 bits
    emb[rows[5]] = emb[rows[4]] / np.linalg.norm(emb[rows[4]], axis=1, keepdims=True) + 0.006 * rng.standard_normal(
        (c, DIM), dtype=np.float32)  # embedding copies
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return {"uid": uids, "sha256": np.array(["".join(f"{int(x):016x}" for x in r) for r in sha], dtype=object),
            "ph": ph, "emb": emb.astype(np.float16)}


def write_keys(n: int, folder: Path, seed: int) -> None:
    """The Ray engine's key files (`ray_filter.key_table`) of `planted(n)`, SHARD_ROWS rows per file, plus
    `arrays.npz` for the local run."""
    import pyarrow.parquet as pq

    from curation.select import filtering, ray_filter

    d = planted(n, seed)
    hexes = np.array([f"{int(v):016x}" for v in d["ph"]], dtype=object)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = filtering.FilterConfig(seed=seed)
    for i, r0 in enumerate(range(0, n, SHARD_ROWS)):
        s = slice(r0, r0 + SHARD_ROWS)
        t = {"uid": d["uid"][s], "sha256": d["sha256"][s], "phash": hexes[s], "img_emb": d["emb"][s].astype(np.float32)}
        keys = ray_filter.key_table(cfg, t, np.arange(len(t["uid"])), i, "float16")
        pq.write_table(keys, folder / f"{i:05d}.parquet")


def _png(rng) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).resize((32, 32)).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(n: int, folder: Path, seed: int) -> None:
    """Download shards (SHARD_SCHEMA, tiny distinct PNGs, 2% failed rows) and their embeddings (`NNNNN.npz`) with the
    planted copies: exact copies share the PNG bytes."""
    import hashlib

    import pyarrow as pa

    from mithridate.core import schema

    rng = np.random.default_rng(seed + 1)
    d = planted(n, seed)
    shards, emb = folder / "shards", folder / "embeddings"
    shards.mkdir(parents=True, exist_ok=True)
    emb.mkdir(parents=True, exist_ok=True)
    pngs = {}
    words = np.array(["red", "blue", "cat", "dog", "house", "tree", "emoji", "icon", "small", "happy", "big", "green"])
    for i, r0 in enumerate(range(0, n, SHARD_ROWS)):
        rows = range(r0, min(n, r0 + SHARD_ROWS))
        status = np.where(rng.random(len(rows)) < 0.02, schema.STATUS_FAILED_DOWNLOAD, schema.STATUS_SUCCESS)
        jpg = [pngs.setdefault(d["sha256"][r], _png(rng)) if s == schema.STATUS_SUCCESS else None
               for r, s in zip(rows, status)]
        captions = [" ".join(rng.choice(words, 3)) for _ in rows]
        ok = status == schema.STATUS_SUCCESS
        table = {"uid": d["uid"][r0 : r0 + len(rows)].tolist(), "url": [f"http://127.0.0.1/{r}.png" for r in rows],
                 "caption": captions, "page_url": [None] * len(rows), "domain": ["127.0.0.1"] * len(rows),
                 "source": ["urllist"] * len(rows), "signals": [[] for _ in rows], "status": status.tolist(),
                 "error_message": [None if s else "404" for s in ok], "optout": [None] * len(rows),
                 "sha256": [hashlib.sha256(j).hexdigest() if j else None for j in jpg],
                 "width": [32 if s else None for s in ok], "height": [32 if s else None for s in ok],
                 "original_width": [32 if s else None for s in ok], "original_height": [32 if s else None for s in ok],
                 "jpg": jpg}
        schema.write(pa.table(table, schema=schema.SHARD_SCHEMA), shards / f"{i:05d}.parquet", "shard")
        e = d["emb"][r0 : r0 + len(rows)][ok]
        np.savez(emb / f"{i:05d}.npz", uid=np.array(table["uid"])[ok], img_emb=e, txt_emb=e, encoder=np.array("bench"))
    (emb / "encoder.json").write_text('{"name": "bench"}')
    del pngs


# --- children (one measurement each) -----------------------------------------------------------------------------

def child_dedup(data: Path, engine: str, cpus: int) -> dict:
    from curation.select import dedup, filtering, ray_filter

    cfg = filtering.FilterConfig(seed=0, embeddings="x", engine=engine)
    files = sorted(str(f) for f in data.glob("*.parquet"))
    if engine == "ray":
        from mithridate.core import engine as engines

        t0 = time.perf_counter()
        engines.ray_init(num_cpus=cpus)
        init = time.perf_counter() - t0
        t0 = time.perf_counter()
        found = ray_filter.global_dedup(cfg, files, "float16")
        seconds = time.perf_counter() - t0
        flagged = {layer: dict(zip(r.tolist(), o.tolist())) for layer, (r, o) in found.items()}
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        init = 0.0
        t0 = time.perf_counter()
        t = pa.concat_tables([pq.read_table(f) for f in files])  # reading counts: the Ray driver never does it
        rid, uids = t["rid"].to_numpy(), np.array(t["uid"].to_pylist(), dtype=object)
        emb = ray_filter.embeddings_of(t["emb"], "float16")
        hexes = [f"{int(v):016x}" for v in t["ph"].to_numpy()]
        active = np.ones(len(uids), dtype=bool)
        flagged = {}
        for layer, d in (("exact", lambda a: dedup.exact_duplicates(t["sha256"].to_pylist(), uids, active=a)),
                         ("phash", lambda a: dedup.phash_duplicates(hexes, uids, k=cfg.dedup_phash_k, active=a)),
                         ("semantic", lambda a: dedup.semantic_duplicates(emb, uids, eps=cfg.semantic_eps, active=a))):
            res = d(active)
            flagged[layer] = dict(zip(rid[res.mask].tolist(), res.duplicate_of[res.mask].tolist()))
            active &= ~res.mask
        seconds = time.perf_counter() - t0
    digest = {layer: len(v) for layer, v in flagged.items()}
    key = json.dumps({k: sorted(v.items()) for k, v in flagged.items()})
    import hashlib

    return {"seconds": round(seconds, 2), "ray_init_s": round(init, 2), "peak_rss_mib": _rss_mib(), "flagged": digest,
            "result_sha256": hashlib.sha256(key.encode()).hexdigest()}


def child_filter(data: Path, out: Path, engine: str, cpus: int) -> dict:
    import hashlib

    from curation.select import filtering
    from mithridate.core import schema

    init = 0.0
    if engine == "ray":
        from mithridate.core import engine as engines

        t0 = time.perf_counter()
        engines.ray_init(num_cpus=cpus)
        init = time.perf_counter() - t0
    cfg = filtering.FilterConfig(shards=str(data / "shards"), embeddings=str(data / "embeddings"), out=str(out),
                                 engine=engine)
    t0 = time.perf_counter()
    filtering.run(cfg)
    seconds = time.perf_counter() - t0
    table = schema.read(out / "decisions.parquet", "decisions")
    stats = json.loads((out / "__stats__" / "run.json").read_text())
    return {"seconds": round(seconds, 2), "ray_init_s": round(init, 2), "peak_rss_mib": _rss_mib(),
            "kept": stats["kept"], "reasons": stats["reasons"],
            "keep_sha256": hashlib.sha256((out / "subsets" / "keep.npy").read_bytes()).hexdigest(),
            "decisions_sha256": hashlib.sha256(json.dumps(table.to_pylist(), sort_keys=True).encode()).hexdigest()}


def child_download(pairs: Path, out: Path, engine: str, cpus: int) -> dict:
    import mithridate as mt

    init = 0.0
    if engine == "ray":
        from mithridate.core import engine as engines

        t0 = time.perf_counter()
        engines.ray_init(num_cpus=cpus)
        init = time.perf_counter() - t0
    t0 = time.perf_counter()
    mt.download(pairs=str(pairs), out=str(out), engine=engine, allow_networks=("127.0.0.0/8",), robots=False,
                shard_size=5000, processes=cpus, threads=32, timeout_s=10.0, image_size=32)
    seconds = time.perf_counter() - t0
    stats = json.loads((out / "__stats__" / "run.json").read_text())
    return {"seconds": round(seconds, 2), "ray_init_s": round(init, 2), "peak_rss_mib": _rss_mib(),
            "successes": stats.get("status", {}).get("success")}


def _child(args) -> None:
    if args.child == "dedup":
        res = child_dedup(Path(args.data), args.engine, args.cpus)
    elif args.child == "filter":
        res = child_filter(Path(args.data), Path(args.target), args.engine, args.cpus)
    else:
        res = child_download(Path(args.data), Path(args.target), args.engine, args.cpus)
    print("RESULT " + json.dumps(res))


def run_child(part: str, data: Path, engine: str, cpus: int, target: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", part, "--data", str(data), "--engine", engine, "--cpus", str(cpus)]
    if target is not None:
        cmd += ["--target", str(target)]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{part} {engine} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# --- parts -------------------------------------------------------------------------------------------------------

def exponent(sizes: list[int], seconds: list[float]) -> float | None:
    """b of seconds ∝ rowsᵇ, least squares on logs (None with fewer than two sizes)."""
    if len(sizes) < 2:
        return None
    return round(float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0]), 2)


def bench_rows(part: str, sizes: list[int], root: Path, cpus: int, seed: int, local_max: int) -> list[dict]:
    rows = []
    for n in sizes:
        data = root / f"{part}-{n}"
        t0 = time.perf_counter()
        (write_keys if part == "dedup" else write_shards)(n, data, seed)
        print(f"  {part} {n:,} rows: data written in {time.perf_counter() - t0:.0f} s", flush=True)
        got = {}
        for engine in ("local", "ray"):
            if engine == "local" and n > local_max:
                continue
            got[engine] = run_child(part, data, engine, cpus, root / f"{part}-{n}-out" if part == "filter" else None)
            rows.append({"part": part, "rows": n, "engine": engine, **got[engine]})
            print(f"  {part} {n:,} {engine}: {got[engine]}", flush=True)
        same = ("result_sha256",) if part == "dedup" else ("keep_sha256", "decisions_sha256")
        if len(got) == 2:
            for r in rows[-2:]:
                r["identical"] = all(got["local"][k] == got["ray"][k] for k in same)
    return rows


def bench_download(n: int, root: Path, cpus: int) -> list[dict]:
    from curation.acquire import pairs as pairs_mod
    from curation.world import webserver

    rng = np.random.default_rng(0)
    site = webserver.SiteServer("127.0.0.1")
    site.routes.update({f"/img/{i}.png": webserver.Route(_png(rng), "image/png") for i in range(n)})
    site.start()
    try:
        pairs_mod.write_pairs(({"url": f"{site.origin}/img/{i}.png", "caption": f"image number {i}",
                                "source": "urllist"}
                               for i in range(n)), root / "pairs", shard_size=5000)
        rows = []
        for engine in ("local", "ray"):
            r = run_child("download", root / "pairs", engine, cpus, root / f"download-{engine}")
            rows.append({"part": "download", "rows": n, "engine": engine, **r})
            print(f"  download {n:,} {engine}: {r}", flush=True)
        return rows
    finally:
        site.stop()


def table(rows: list[dict]) -> str:
    out = ["| part | rows | engine | seconds | Ray start (s) | peak driver RSS (MiB) | same output as local |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['part']} | {r['rows']:,} | {r['engine']} | {r['seconds']} | {r['ray_init_s'] or ''} | "
                   f"{r['peak_rss_mib']:.0f} | {'yes' if r.get('identical') else ('no' if 'identical' in r else '')} |")
    for part in ("dedup", "filter"):
        for engine in ("local", "ray"):
            sel = [r for r in rows if r["part"] == part and r["engine"] == engine]
            b = exponent([r["rows"] for r in sel], [r["seconds"] for r in sel])
            if b is not None:
                out.append(f"\n{part} {engine}: seconds ∝ rows^{b}; peak driver RSS "
                           + " → ".join(f"{r['peak_rss_mib']:.0f}" for r in sel) + " MiB")
    return "\n".join(out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dedup", default="100000,300000,1000000", help="row counts of the dedup part ('0': skip)")
    p.add_argument("--filter", default="20000,60000", help="row counts of the whole filter stage ('0': skip)")
    p.add_argument("--download", type=int, default=20000, help="loopback images to download (0: skip)")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray cluster / processes")
    p.add_argument("--local_max", type=int, default=300_000,
                   help="largest size run on the local engine (its pHash layer is O(n²): ~20 min at 1M on 2 cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="keep the data here and write results.json")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--data", default="", help=argparse.SUPPRESS)
    p.add_argument("--target", default="", help=argparse.SUPPRESS)
    p.add_argument("--engine", default="local", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return {}
    sizes = {k: [int(x) for x in getattr(args, k).split(",") if int(x) > 0] for k in ("dedup", "filter")}
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="scale-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for part in ("dedup", "filter"):
        rows += bench_rows(part, sizes[part], root, args.cpus, args.seed, args.local_max)
    if args.download:
        rows += bench_download(args.download, root, args.cpus)
    print(table(rows))
    results = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "ray_cpus": args.cpus,
                           "platform": platform.platform()}, "rows": rows}
    if args.out:
        (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
