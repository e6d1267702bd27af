"""Benchmark: `mithridate download` against the `img2dataset` CLI alone, on the same URL list, plus crawl pages/s.

One run serves the demo web (default art preset) on loopback, crawls it a few times (crawl pages/s), builds
one URL list of real, fetchable, not-opted-out images from the crawl joined with the web manifest, then
downloads that list `--repeats` times with each contender, alternating which goes first. Both contenders
run as subprocesses (interpreter and import start-up on both sides) with the same processes, threads,
shard size, timeout, output size and resize mode, and both are timed by wall clock around the subprocess.

    python bench/download.py                       # defaults: 3 repeats, 1 process, 64 threads
    python bench/download.py --repeats 5 --out /tmp/bench

Prints a table (median, min, max images/s and successes per contender), the ratio ours/img2dataset
(target ≥ 0.90) and the crawl's pages/s. With `--scale F` (default 4) each repeat also downloads the list F
times over, which splits each contender's wall clock into a fixed start-up cost and a steady-state rate
(extra images / extra seconds on its own stage clock), and prints that ratio too. Everything also goes to
`<out>/results.json`. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/download.py` from anywhere
    sys.path.insert(0, str(REPO))

from curation.acquire import crawler, netguard
from curation.acquire.pairs import write_pairs  # noqa: E402
from curation.acquire.signals import AI_DIRECTIVES  # noqa: E402
from curation.world import art, web  # noqa: E402
from mithridate.core import schema, stats_files

logger = logging.getLogger("bench.download")

OURS, ANCHOR = "mithridate download", "img2dataset CLI"
TARGET = 0.90


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="measured downloads per contender (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured downloads per contender first (cold caches)")
    p.add_argument("--processes", type=int, default=1, help="worker processes, both contenders")
    p.add_argument("--threads", type=int, default=64, help="download threads per process, both contenders")
    p.add_argument("--shard_size", type=int, default=10000, help="rows per shard, both contenders")
    p.add_argument("--timeout", type=int, default=10, help="socket timeout of one image request (s), both contenders")
    p.add_argument("--image_size", type=int, default=64, help="stored image side (px), both contenders")
    p.add_argument("--min_images", type=int, default=2000, help="fail unless the URL list has at least this many")
    p.add_argument("--scale", type=int, default=4,
                   help="also download the list repeated this many times (captions made unique) to get the "
                        "steady-state rate (extra images / extra stage seconds) and the fixed start-up cost; 0 = skip")
    p.add_argument("--rehost_fraction", type=float, default=0.3,
                   help="demo web's aggregator re-upload fraction; its re-uploads carry no opt-out signal, and "
                        "the web's default (0.15) leaves only ~1,790 clean images, below --min_images")
    p.add_argument("--crawl_repeats", type=int, default=3, help="crawls of the demo web (median pages/s)")
    p.add_argument("--cache_dir", default="", help="art cache root ('' = $MITHRIDATE_CACHE, else the user cache)")
    p.add_argument("--out", default="", help="folder of results.json and scratch runs ('' = a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the downloaded shards of every run")
    p.add_argument("--run_timeout", type=float, default=600.0, help="kill a contender run after this many seconds")
    args = p.parse_args(argv)
    for name in ("repeats", "processes", "threads", "shard_size", "timeout", "image_size", "crawl_repeats"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be > 0")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.scale == 1 or args.scale < 0:
        p.error("--scale must be 0 (skip) or >= 2")
    return args


# --------------------------------------------------------------------------------------------- crawl + URL list


def crawl(w: web.DemoWeb, out: Path, repeats: int) -> tuple[Path, list[dict]]:
    """Crawl the demo web `repeats` times into separate folders; returns (first pairs folder, per-crawl stats)."""
    stats = []
    for k in range(repeats):
        folder = out / f"crawl-{k}"
        cfg = crawler.CrawlConfig(seeds=tuple(w.seeds), out=str(folder), allow_networks=w.networks)
        crawler.run(cfg)
        s = stats_files.read(folder)
        stats.append({k2: s.get(k2) for k2 in ("pages_fetched", "seconds", "pages_per_s", "pairs")})
        logger.info("crawl %d/%d: %s pages in %.2f s = %.1f pages/s", k + 1, repeats, s.get("pages_fetched"),
                    s["seconds"], s["pages_per_s"])
    return out / "crawl-0" / "pairs", stats


def url_list(pairs_folder: Path, w: web.DemoWeb) -> list[dict]:
    """Crawled pairs of real images with no planted failure and no opt-out signal (crawl or manifest), by URL."""
    truth = {r["url"]: r for r in w.manifest.select(["url", "item_id", "failure", "signals"]).to_pylist()}
    rows, seen = [], set()
    for r in schema.read_folder(pairs_folder, "pairs", ["url", "caption", "signals"]).to_pylist():
        t = truth.get(r["url"])
        if t is None or r["url"] in seen or r["signals"] or t["signals"] or t["failure"] or not t["item_id"]:
            continue
        seen.add(r["url"])
        rows.append({"url": r["url"], "caption": r["caption"]})
    rows.sort(key=lambda r: r["url"])
    random.Random(0).shuffle(rows)  # mix the sites; same order for both contenders
    return rows


def scaled(rows: list[dict], factor: int) -> list[dict]:
    """The list `factor` times over; copy k > 0 gets the caption suffix " #k" (distinct pair uids for ours)."""
    return rows + [{"url": r["url"], "caption": f"{r['caption']} #{k}"} for k in range(1, factor) for r in rows]


def write_inputs(rows: list[dict], folder: Path, shard_size: int) -> tuple[Path, Path]:
    """The same rows as an img2dataset URL list (parquet: url, caption) and as our pairs folder."""
    folder.mkdir(parents=True, exist_ok=True)
    urls = folder / "urls.parquet"
    pq.write_table(pa.table({"url": [r["url"] for r in rows], "caption": [r["caption"] for r in rows]}), urls)
    pairs = folder / "pairs"
    rows = ({"url": r["url"], "caption": r["caption"], "source": "urllist", "signals": []} for r in rows)
    written = write_pairs(rows, pairs, shard_size)
    if written["pairs"] != len(rows):
        raise RuntimeError(f"pairs folder holds {written['pairs']} rows, URL list {len(rows)}")
    return urls, pairs


# --------------------------------------------------------------------------------------------- contenders


def _img2dataset_exe() -> str:
    exe = Path(sys.executable).parent / "img2dataset"
    found = str(exe) if exe.exists() else shutil.which("img2dataset")
    if not found:
        raise SystemExit("img2dataset CLI not found next to the interpreter nor on PATH")
    return found


def anchor_cmd(args, urls: Path, out: Path) -> list[str]:
    """The img2dataset CLI, configured to do the same work as our stage (see bench/README.md)."""
    return [
        _img2dataset_exe(), f"--url_list={urls}", "--input_format=parquet", "--url_col=url", "--caption_col=caption",
        "--output_format=parquet", f"--output_folder={out}", f"--image_size={args.image_size}",
        "--resize_mode=border", f"--processes_count={args.processes}", f"--thread_count={args.threads}",
        f"--timeout={args.timeout}", f"--number_sample_per_shard={args.shard_size}", "--enable_wandb=False",
        # what our stage sets: no EXIF, our user-agent token, the same directives, size and pixel caps
        "--extract_exif=False", f"--user_agent_token={netguard.USER_AGENT_TOKEN}",
        f"--disallowed_header_directives={json.dumps(list(AI_DIRECTIVES))}", "--min_image_size=16",
        "--max_image_area=50000000", "--encode_quality=95", "--retries=0",
    ]


def ours_cmd(args, pairs: Path, out: Path, networks) -> list[str]:
    return [
        sys.executable, "-m", "curation", "download", f"--pairs={pairs}", f"--out={out}",
        f"--image_size={args.image_size}", "--resize_mode=border", f"--processes={args.processes}",
        f"--threads={args.threads}", f"--timeout_s={args.timeout}", f"--shard_size={args.shard_size}",
        f"--allow_networks={','.join(networks)}", "--policy=honor", "--retries=0",
    ]


def _successes_anchor(out: Path) -> tuple[int, float, float, set]:
    """(successes, span of shard work in s, sum of shard durations in s, success URLs) of an img2dataset run."""
    stats = [json.loads(f.read_text()) for f in sorted(out.glob("*_stats.json"))]
    if not stats:
        raise RuntimeError(f"img2dataset wrote no *_stats.json in {out}")
    span = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats)
    urls = set()
    for f in sorted(out.glob("*.parquet")):
        t = pq.read_table(f, columns=["url", "status"]).to_pylist()
        urls |= {r["url"] for r in t if r["status"] == "success"}
    return sum(s["successes"] for s in stats), span, sum(s["duration"] for s in stats), urls


def _successes_ours(out: Path) -> tuple[int, float, float, set]:
    """(successes, stage seconds from its run stats, sum of shard seconds, success URLs) of a run of ours."""
    stats = stats_files.read(out)
    shard_s = sum(json.loads(f.read_text())["seconds"] for f in stats_files.shards(out))
    t = schema.read_folder(out, "shard", ["url", "status"]).to_pylist()
    urls = {r["url"] for r in t if r["status"] == schema.STATUS_SUCCESS}
    return stats["status"].get(schema.STATUS_SUCCESS, 0), stats["seconds"], shard_s, urls


def run_one(name: str, cmd: list[str], out: Path, timeout: float) -> dict:
    """Run one contender in a subprocess; wall clock around it; counts from its own stats files."""
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    log = out.with_suffix(".log")
    with log.open("w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}")
    n, stage_s, shard_sum_s, urls = (_successes_anchor if name == ANCHOR else _successes_ours)(out)
    return {"wall_s": round(wall, 3), "successes": n, "images_per_s": round(n / wall, 1),
            "stage_s": round(stage_s, 3), "stage_images_per_s": round(n / max(stage_s, 1e-9), 1),
            "shard_seconds_sum": round(shard_sum_s, 3), "overhead_s": round(wall - stage_s, 3),
            "log": str(log), "_urls": urls}


# --------------------------------------------------------------------------------------------- report


def _summary(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def steady_state(base: dict, big: dict) -> dict:
    """Steady-state rates and fixed cost from the base and scaled runs of one repeat.

    Differencing each tool's own stage clock (img2dataset: shard span; ours: `__stats__/run.json` seconds) cancels
    what does not grow with the list (imports inside ours' stage, spawns, exits) and is far less noisy than
    differencing wall clocks, which is kept as a cross-check. fixed = base wall − base images / stage rate.
    """
    extra = big["successes"] - base["successes"]

    def rate(key: str) -> float:
        dt = big[key] - base[key]
        return round(extra / dt, 1) if dt > 0 else float("inf")

    stage = rate("stage_s")
    return {"images_per_s": stage, "images_per_s_wall": rate("wall_s"),
            "fixed_s": round(base["wall_s"] - base["successes"] / stage, 3)}


def report(results: dict) -> str:
    c, n, p = results["contenders"], results["inputs"]["rows"], results["params"]
    lines = [
        f"download benchmark: {n} image URLs from the demo web, {p['repeats']} repeats (order alternated), "
        f"processes={p['processes']} threads={p['threads']} shard_size={p['shard_size']} "
        f"image_size={p['image_size']}, {results['machine']['cpus']} CPUs",
        "images/s = successes / wall clock of the whole subprocess (interpreter start-up and imports included)",
        "",
        f"{'contender':<22}{'median img/s':>14}{'min':>10}{'max':>10}{'successes':>11}{'wall s (med)':>14}",
    ]
    for name in (ANCHOR, OURS):
        s, w = c[name]["images_per_s"], c[name]["wall_s"]
        succ = sorted({r["successes"] for r in c[name]["runs"]})
        lines.append(f"{name:<22}{s['median']:>14.1f}{s['min']:>10.1f}{s['max']:>10.1f}"
                     f"{'/'.join(map(str, succ)):>11}{w['median']:>14.2f}")
    verdict = "OK" if results["ratio"] >= TARGET else "BELOW TARGET"
    lines += ["", f"ratio ours/img2dataset = {results['ratio']:.2f} (target ≥ {TARGET:.2f})  {verdict}"]
    if results.get("ratio_steady") is not None:
        f = p["scale"]
        lines += ["", f"steady state (each repeat also downloads the list ×{f} = {f * n} URLs; rate = extra images / "
                      "extra seconds of the tool's own stage clock; fixed = wall − images / rate):"]
        for name in (ANCHOR, OURS):
            r, x = c[name]["steady_images_per_s"], c[name]["fixed_s"]
            rw = c[name]["steady_images_per_s_wall"]["median"]
            lines.append(f"  {name:<20}{r['median']:>9.1f} img/s median (min {r['min']:.1f}, max {r['max']:.1f}; "
                         f"from wall clocks {rw:.1f})   fixed cost ≈ {x['median']:.2f} s")
        lines.append(f"  ratio ours/img2dataset (steady state) = {results['ratio_steady']:.2f}")
    lines.append("  fixed cost of img2dataset: CLI import (img2dataset pulls in torch via webdataset, and "
                 "albumentations), then a spawned pool worker and a spawned logger process that each import it "
                 "again, then the logger join and interpreter exit.")
    lines.append("  fixed cost of ours: `python -m curation` imports, then img2dataset's import before the stage "
                 "clock starts; no spawned process when there is one shard or "
                 "processes=1.")
    lines.append("  as each tool reports it (start-up excluded): img2dataset shard span "
                 f"{c[ANCHOR]['stage_images_per_s']['median']:.1f} img/s; ours __stats__/run.json "
                 f"{c[OURS]['stage_images_per_s']['median']:.1f} img/s")
    if results["same_successes"] is not True:
        lines.append(f"  WARNING: success sets differ: {results['same_successes']}")
    cr = results["crawl"]
    lines += ["", f"crawl: {cr['pages_per_s']['median']:.1f} pages/s median of {len(cr['runs'])} crawls "
              f"(min {cr['pages_per_s']['min']:.1f}, max {cr['pages_per_s']['max']:.1f}; "
              f"{cr['runs'][0]['pages_fetched']} pages each)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out or tempfile.mkdtemp(prefix="mithridate-bench-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    art_cfg = art.PRESETS["default"]
    if args.cache_dir:
        import dataclasses

        art_cfg = dataclasses.replace(art_cfg, cache_dir=args.cache_dir)
    corpus = art.run(art_cfg)
    web_cfg = web.WebConfig(art_dir=str(corpus), out=str(out / "web"), rehost_fraction=args.rehost_fraction)
    with web.DemoWeb(web_cfg) as w:
        pairs_folder, crawls = crawl(w, out / "crawls", args.crawl_repeats)
        rows = url_list(pairs_folder, w)
        if len(rows) < args.min_images:
            raise SystemExit(f"only {len(rows)} clean images in the crawl (< --min_images={args.min_images}); "
                             "raise --rehost_fraction")
        inputs = {"base": write_inputs(rows, out / "inputs" / "base", args.shard_size)}
        if args.scale:
            inputs["scaled"] = write_inputs(scaled(rows, args.scale), out / "inputs" / "scaled", args.shard_size)
        logger.info("URL list: %d images, the same for both contenders: %s and %s", len(rows), *inputs["base"])

        def cmd(name: str, size: str, folder: Path) -> list[str]:
            urls, pairs = inputs[size]
            return anchor_cmd(args, urls, folder) if name == ANCHOR else ours_cmd(args, pairs, folder, w.networks)

        runs: dict[str, dict[str, list[dict]]] = {ANCHOR: {"base": [], "scaled": []}, OURS: {"base": [], "scaled": []}}
        urls_ok: dict[str, list[set]] = {ANCHOR: [], OURS: []}
        scratch = out / "runs"
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir()
        for k in range(args.warmup + args.repeats):
            warm = k < args.warmup
            order = (ANCHOR, OURS) if k % 2 == 0 else (OURS, ANCHOR)
            sizes = ["base"] + (["scaled"] if args.scale and not warm else [])
            for size in sizes:
                for name in order:
                    tag = "warmup" if warm else f"repeat {k - args.warmup + 1}/{args.repeats}"
                    short = "img2dataset" if name == ANCHOR else "ours"
                    folder = scratch / f"{k:02d}-{size}-{short}"
                    r = run_one(name, cmd(name, size, folder), folder, args.run_timeout)
                    logger.info("%-10s %-6s %-20s %5d successes in %6.2f s wall = %7.1f img/s", tag, size, name,
                                r["successes"], r["wall_s"], r["images_per_s"])
                    r.update(repeat=k - args.warmup, position=order.index(name))
                    found = r.pop("_urls")
                    if not warm:
                        runs[name][size].append(r)
                        if size == "base":
                            urls_ok[name].append(found)
                    if not args.keep:
                        shutil.rmtree(folder, ignore_errors=True)

    # the same images must come out of both, every time
    ref = urls_ok[ANCHOR][0]
    diffs = [f"{name} repeat {i}: {len(s - ref)} extra, {len(ref - s)} missing"
             for name, ss in urls_ok.items() for i, s in enumerate(ss) if s != ref]
    contenders = {}
    for name, rs in runs.items():
        base = rs["base"]
        entry = {"command": cmd(name, "base", scratch / "<run>"), "runs": base, "scaled_runs": rs["scaled"]}
        for key in ("images_per_s", "wall_s", "stage_images_per_s", "overhead_s", "successes"):
            entry[key] = _summary([r[key] for r in base])
        if args.scale:
            steady = [steady_state(b, s) for b, s in zip(base, rs["scaled"])]
            entry["steady"] = steady
            entry["steady_images_per_s"] = _summary([x["images_per_s"] for x in steady])
            entry["steady_images_per_s_wall"] = _summary([x["images_per_s_wall"] for x in steady])
            entry["fixed_s"] = _summary([x["fixed_s"] for x in steady])
        contenders[name] = entry

    def ratio(key: str) -> float:
        return round(contenders[OURS][key]["median"] / contenders[ANCHOR][key]["median"], 3)

    results = {
        "params": vars(args),
        "inputs": {"rows": len(rows), **{f"{k}_{i}": str(v) for k, (a, b) in inputs.items()
                                          for i, v in (("urls_parquet", a), ("pairs", b))}},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "contenders": contenders, "target": TARGET,
        "ratio": ratio("images_per_s"),
        "ratio_steady": ratio("steady_images_per_s") if args.scale else None,
        "same_successes": True if not diffs else diffs,
        "crawl": {"runs": crawls, "pages_per_s": _summary([c["pages_per_s"] for c in crawls])},
        "bench_seconds": round(time.time() - t_start, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(report(results))
    print(f"\nresults: {out / 'results.json'}  ({results['bench_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
