"""Benchmark: semantic dedup (SemDeDup, `curation.select.dedup.semantic_duplicates`) on 100k random unit vectors.

    python bench/dedup.py                         # 100k × 128-D, 1,000 planted near-duplicates, ε = 0.01
    python bench/dedup.py --n 300000 --planted 5000 --keep hard
    python bench/dedup.py --phash_n 10000         # also time the pHash layer on 10k random 64-bit hashes

Random unit vectors in 128-D are nearly orthogonal (pairwise cosine ≈ N(0, 1/128), the largest of 5·10⁹
pairs ≈ 0.55), so every duplicate found beyond the planted ones would be a bug. Each planted copy is a base
row plus Gaussian noise, re-normalised, at cosine ≈ 1 − noise²·D/2 from its base (0.9975 with the defaults,
inside ε = 0.01). A planted pair counts as found when one of the two rows is flagged with the other as its
`duplicate_of`. SemDeDup only compares rows within a k-means cluster, so a pair split across two clusters is
missed; the bench reports how many were.

Prints the wall time of the call (the data generation and the scikit-learn import are not counted), the
Python-heap peak during the call (tracemalloc: numpy buffers included) and the process's peak RSS
(`resource.getrusage`, includes the input), then writes the same as JSON with `--out`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/dedup.py` from anywhere
    sys.path.insert(0, str(REPO))

from curation.select import dedup  # noqa: E402


def planted_vectors(n: int, dim: int, planted: int, noise: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float16 unit vectors, base rows, copy rows): `planted` rows are noisy copies of other rows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    rows = rng.permutation(n)
    base, copy = rows[:planted], rows[planted : 2 * planted]
    x[copy] = x[base] / np.linalg.norm(x[base], axis=1, keepdims=True) + noise * rng.standard_normal(
        (planted, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16), base, copy  # the embeddings contract: float16, L2-normalised


def found_pairs(res: dedup.Duplicates, uids: np.ndarray, base: np.ndarray, copy: np.ndarray) -> tuple[int, int]:
    """(planted pairs found, flagged rows that are not part of a planted pair)."""
    of = res.duplicate_of
    found = sum(1 for b, c in zip(base, copy) if of[c] == uids[b] or of[b] == uids[c])
    planted = np.zeros(len(uids), dtype=bool)
    planted[base] = planted[copy] = True
    return found, int((res.mask & ~planted).sum())


def bench_semantic(args) -> dict:
    x, base, copy = planted_vectors(args.n, args.dim, args.planted, args.noise, args.seed)
    uids = np.array([f"{i:032x}" for i in range(args.n)], dtype=object)
    cos = np.einsum("ij,ij->i", x[base].astype(np.float32), x[copy].astype(np.float32))
    import sklearn.cluster  # noqa: F401 - imported before the clock starts

    tracemalloc.start()
    t0 = time.perf_counter()
    res = dedup.semantic_duplicates(x, uids, eps=args.eps, n_clusters=args.n_clusters, seed=args.seed, keep=args.keep)
    seconds = time.perf_counter() - t0
    _, heap_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    found, false_pos = found_pairs(res, uids, base, copy)
    # planted pairs that k-means split across clusters (the only way SemDeDup can miss one here)
    xs, _ = dedup.normalize_rows(x)
    k = args.n_clusters or int(np.ceil(np.sqrt(args.n)))
    labels, _ = dedup.kmeans_labels(xs[dedup.priority_order(uids)], k, seed=args.seed)
    label_of = np.empty(args.n, dtype=np.int64)
    label_of[dedup.priority_order(uids)] = labels
    split = int((label_of[base] != label_of[copy]).sum())
    sizes = np.bincount(labels)
    return {"n": args.n, "dim": args.dim, "planted": args.planted, "eps": args.eps, "keep": args.keep,
            "n_clusters": int(k), "largest_cluster": int(sizes.max()), "median_cluster": float(np.median(sizes)),
            "planted_cosine_min": float(cos.min()), "planted_cosine_median": float(np.median(cos)),
            "seconds": round(seconds, 2), "heap_peak_mib": round(heap_peak / 2**20, 1),
            "duplicates_flagged": res.count, "planted_found": found, "planted_split_across_clusters": split,
            "false_positives": false_pos}


def bench_phash(args) -> dict:
    rng = np.random.default_rng(args.seed)
    n, planted = args.phash_n, max(1, args.phash_n // 100)
    vals = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) << np.uint64(1) | rng.integers(
        0, 2, size=n).astype(np.uint64)
    rows = rng.permutation(n)
    base, copy = rows[:planted], rows[planted : 2 * planted]
    flips = rng.integers(0, 64, size=(planted, 4)).astype(np.uint64)
    vals[copy] = vals[base] ^ np.bitwise_or.reduce(np.uint64(1) << flips, axis=1)  # ≤ 4 bits apart
    hexes = [f"{int(v):016x}" for v in vals]
    uids = np.array([f"{i:032x}" for i in range(n)], dtype=object)
    tracemalloc.start()
    t0 = time.perf_counter()
    res = dedup.phash_duplicates(hexes, uids, k=dedup.DEFAULT_PHASH_K)
    seconds = time.perf_counter() - t0
    _, heap_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    found, false_pos = found_pairs(res, uids, base, copy)
    return {"n": n, "planted": planted, "k": dedup.DEFAULT_PHASH_K, "seconds": round(seconds, 2),
            "heap_peak_mib": round(heap_peak / 2**20, 1), "planted_found": found, "false_positives": false_pos}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="vectors")
    p.add_argument("--dim", type=int, default=128, help="dimension")
    p.add_argument("--planted", type=int, default=1000, help="planted near-duplicate pairs")
    p.add_argument("--noise", type=float, default=0.006, help="per-coordinate noise of a planted copy")
    p.add_argument("--eps", type=float, default=dedup.DEFAULT_EPS, help="SemDeDup ε (duplicates: cosine ≥ 1 − ε)")
    p.add_argument("--n_clusters", type=int, default=None, help="k-means clusters (default ⌈√n⌉)")
    p.add_argument("--keep", default="first", choices=["first", "hard", "easy"], help="which copy to keep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phash_n", type=int, default=0, help="also bench the pHash layer on this many hashes")
    p.add_argument("--out", default="", help="write the results as JSON to this file")
    args = p.parse_args(argv)
    if not 0 < 2 * args.planted <= args.n:
        p.error("--planted must be > 0 and at most n / 2")

    results = {"machine": {"python": platform.python_version(), "numpy": np.__version__,
                           "cpus": __import__("os").cpu_count(), "platform": platform.platform()}}
    sem = results["semantic"] = bench_semantic(args)
    print(f"semantic dedup: {sem['n']:,} × {sem['dim']}-D, k = {sem['n_clusters']} clusters (largest "
          f"{sem['largest_cluster']}, median {sem['median_cluster']:.0f}), ε = {sem['eps']}, keep = {sem['keep']}")
    print(f"  time {sem['seconds']:.2f} s, heap peak {sem['heap_peak_mib']:.0f} MiB (tracemalloc)")
    print(f"  planted pairs found {sem['planted_found']}/{sem['planted']} (cosine ≥ {sem['planted_cosine_min']:.4f};"
          f" {sem['planted_split_across_clusters']} split across clusters), other rows flagged "
          f"{sem['false_positives']}")
    if args.phash_n:
        ph = results["phash"] = bench_phash(args)
        print(f"pHash dedup: {ph['n']:,} hashes, k = {ph['k']}: time {ph['seconds']:.2f} s, heap peak "
              f"{ph['heap_peak_mib']:.0f} MiB, planted pairs found {ph['planted_found']}/{ph['planted']}, other rows "
              f"flagged {ph['false_positives']}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results["peak_rss_mib"] = round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)
    print(f"process peak RSS {results['peak_rss_mib']:.0f} MiB (input, interpreter and libraries included)")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
