"""Deduplication in three layers: exact bytes (sha256), perceptual (pHash), semantic (SemDeDup on embeddings).

Every layer takes one key per row (sha256 hex, pHash hex, embedding row) plus the rows' uids and returns a
`Duplicates`: per row, a reason (`duplicate_exact`, `duplicate_phash`, `duplicate_semantic`) or None, and the
uid of the kept row it duplicates (DECISIONS_SCHEMA's `duplicate_of`).

Which copy is kept is greedy and deterministic: rows are visited in *priority order* (`priority_order`:
`rank` ascending when given, lower = preferred, then uid, so the result does not depend on row order), and a
row is a duplicate when it is within the layer's tolerance of a row already kept; `duplicate_of` is the
nearest such kept row (ties: the earliest). Rows with no key (null sha256 or pHash, NaN or zero embedding)
and rows outside `active` are never duplicates and never kept representatives: pass as `active` the rows
that survive the other filters, so that no row is dropped as the copy of a row that is itself excluded.

Costs:
- exact: a sort, O(n log n).
- pHash: distinct hashes are compared all-against-all with XOR + popcount on uint64, in row blocks
  (`hamming_pairs`): O(u²) word operations for u distinct hashes, temporaries capped at 64 MiB. Measured
  (2 cores, numpy 2.4): 0.14 s for u = 10k, 1.5 s for 30k, 17 s for 100k, ~70 MiB peak. Past ~100k,
  bucket by hash prefix or use multi-index hashing (k + 1 chunks: a pair within k agrees on one chunk).
  Identical hashes (exact re-uploads, placeholder icons) cost nothing extra.
- semantic: k-means (scikit-learn `KMeans`, Lloyd, seeded, fit on at most `sample_size` rows: those with the
  smallest hash of (uid, seed), so every engine picks the same sample), rows assigned to the nearest centroid, then
  all pairs within each cluster in row blocks: O(Σ cᵢ² · d) time, O(block · max cᵢ) memory. k defaults to
  ⌈√n⌉ (balances the two costs). A duplicate pair split across two clusters is missed, as in SemDeDup.
  `python bench/dedup.py` measures 100k × 128-D.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

DUPLICATE_EXACT = "duplicate_exact"
DUPLICATE_PHASH = "duplicate_phash"
DUPLICATE_SEMANTIC = "duplicate_semantic"
DEFAULT_PHASH_K = 8  # Hamming radius on 64-bit pHash: a re-encode or resize moves a work 0-4 bits (see the tests)
DEFAULT_EPS = 0.01  # SemDeDup ε: duplicates have cosine ≥ 1 − ε
DEFAULT_SAMPLE_SIZE = 50_000  # SemDeDup: k-means is fitted on at most this many rows


@dataclass(frozen=True)
class Duplicates:
    """One dedup layer's answer, one entry per input row."""

    reasons: np.ndarray  # object: the layer's reason, or None when the row is not a duplicate
    duplicate_of: np.ndarray  # object: uid of the kept row this row duplicates, or None

    @property
    def mask(self) -> np.ndarray:
        """True where the row is a duplicate."""
        return np.array([r is not None for r in self.reasons], dtype=bool)

    @property
    def count(self) -> int:
        return int(self.mask.sum())


def is_missing(v) -> bool:
    """None, NaN, pandas NA/NaT: a row without this key."""
    return v is None or (isinstance(v, float) and v != v) or type(v).__name__ in ("NAType", "NaTType")


def priority_order(uids: Sequence[str], rank: Sequence[float] | None = None) -> np.ndarray:
    """Row indices in the order rows are visited (and so kept): `rank` ascending, then uid."""
    u = np.asarray(list(uids), dtype=object).astype(str)
    if rank is None:
        return np.argsort(u, kind="stable")
    r = np.asarray(rank, dtype=np.float64)
    if len(r) != len(u):
        raise ValueError(f"rank has {len(r)} entries for {len(u)} rows")
    if np.isnan(r).any():
        raise ValueError("rank has NaN entries: give every row a rank")
    return np.lexsort((u, r))


def _setup(n_keys: int, uids: Sequence[str], active) -> tuple[np.ndarray, np.ndarray]:
    uids = np.asarray(list(uids), dtype=object)
    if len(uids) != n_keys:
        raise ValueError(f"{n_keys} keys for {len(uids)} uids")
    act = np.ones(n_keys, dtype=bool) if active is None else np.asarray(active, dtype=bool)
    if act.shape != (n_keys,):
        raise ValueError(f"active has shape {act.shape}, expected ({n_keys},)")
    return uids, act


def _result(n: int, dup_rows: np.ndarray, of_rows: np.ndarray, uids: np.ndarray, reason: str) -> Duplicates:
    reasons = np.full(n, None, dtype=object)
    of = np.full(n, None, dtype=object)
    reasons[dup_rows] = reason
    of[dup_rows] = uids[of_rows]
    return Duplicates(reasons, of)


# --- exact --------------------------------------------------------------------------------------------------

def exact_duplicates(sha256: Sequence[str | None], uids: Sequence[str], rank: Sequence[float] | None = None,
                     active: Sequence[bool] | None = None) -> Duplicates:
    """Rows whose image bytes hash equal to an earlier row's (priority order): reason `duplicate_exact`."""
    keys = [None if is_missing(h) else str(h).lower() for h in sha256]
    uids, act = _setup(len(keys), uids, active)
    first: dict[str, int] = {}
    dup_rows, of_rows = [], []
    for i in priority_order(uids, rank):
        if not act[i] or keys[i] is None:
            continue
        j = first.setdefault(keys[i], i)
        if j != i:
            dup_rows.append(i)
            of_rows.append(j)
    return _result(len(keys), np.array(dup_rows, dtype=np.int64), np.array(of_rows, dtype=np.int64), uids,
                   DUPLICATE_EXACT)


# --- perceptual ---------------------------------------------------------------------------------------------

def phash(data: bytes | None) -> str | None:
    """64-bit pHash (imagehash.phash: 32×32 grey DCT, 8×8 low band vs median) of encoded image bytes, as 16 hex
    chars; None when the bytes are missing or do not decode."""
    import imagehash
    from PIL import Image, UnidentifiedImageError

    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > 64_000_000:  # a decompression bomb: refuse before decoding
                return None
            return str(imagehash.phash(im.convert("RGB")))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def phashes(jpgs: Sequence[bytes | None]) -> list[str | None]:
    """`phash` of each image; a null or undecodable image gives None. Logs how many did not decode."""
    out = [phash(b) for b in jpgs]
    broken = sum(1 for b, h in zip(jpgs, out) if h is None and b is not None)
    missing = sum(1 for b in jpgs if b is None)
    if broken:
        logger.warning("phash: %d of %d images did not decode (no pHash)", broken, len(out))
    if missing:
        logger.info("phash: %d of %d rows have no image", missing, len(out))
    return out


def phash_ints(hexes: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 values, valid mask) of 16-hex-char pHashes; None or malformed strings are invalid (value 0)."""
    vals = np.zeros(len(hexes), dtype=np.uint64)
    ok = np.zeros(len(hexes), dtype=bool)
    for i, h in enumerate(hexes):
        if isinstance(h, str) and len(h) == 16:
            try:
                vals[i] = np.uint64(int(h, 16))
                ok[i] = True
            except ValueError:
                pass
    return vals, ok


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount64(x: np.ndarray) -> np.ndarray:
    """Bits set in each uint64 (numpy ≥ 2 `bitwise_count`; a byte table on older numpy)."""
    x = np.ascontiguousarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _POP8[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def hamming_pairs(a: np.ndarray, b: np.ndarray | None = None, k: int = DEFAULT_PHASH_K,
                  block: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs within Hamming distance ≤ k: (i, j, distance) arrays.

    With `b` None: pairs i < j of `a` against itself. Otherwise every (i in a, j in b). Blocked brute force over
    uint64 XOR + popcount: O(|a|·|b|) word operations; `block` rows at a time, fewer when needed to keep the
    temporaries under 64 MiB.
    """
    a = np.asarray(a, dtype=np.uint64)
    other = a if b is None else np.asarray(b, dtype=np.uint64)
    block = max(1, min(block, (64 << 20) // (9 * max(1, len(other)))))  # XOR + popcount temporaries ≤ 64 MiB
    out_i, out_j, out_d = [], [], []
    for r0 in range(0, len(a), block):
        rows = a[r0 : r0 + block]
        c0 = r0 if b is None else 0  # self pairs: only the upper triangle
        d = popcount64(rows[:, None] ^ other[None, c0:])
        ii, jj = np.nonzero(d <= k)
        jj = jj + c0
        ii = ii + r0
        if b is None:
            keep = jj > ii
            ii, jj = ii[keep], jj[keep]
        out_i.append(ii)
        out_j.append(jj)
        out_d.append(d[ii - r0, jj - c0])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
    return (np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64),
            np.concatenate(out_d).astype(np.uint8))


def phash_duplicates(phash_hex: Sequence[str | None], uids: Sequence[str], k: int = DEFAULT_PHASH_K,
                     rank: Sequence[float] | None = None, active: Sequence[bool] | None = None) -> Duplicates:
    """Rows whose pHash is within Hamming distance ≤ k of a row kept before them: reason `duplicate_phash`."""
    if not 0 <= k <= 64:
        raise ValueError(f"phash k={k!r}: must be within [0, 64]")
    vals, ok = phash_ints(list(phash_hex))
    uids, act = _setup(len(vals), uids, active)
    ok &= act
    rows = priority_order(uids, rank)
    rows = rows[ok[rows]]
    uniq, inv = np.unique(vals[rows], return_inverse=True)  # rows sharing a hash share one neighbour list
    inv = inv.reshape(-1)
    i, j, d = hamming_pairs(uniq, k=k)
    # neighbours of each distinct hash (both directions), with distances, as CSR
    src, dst, dist = np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([d, d])
    order = np.lexsort((dst, src))
    src, dst, dist = src[order], dst[order], dist[order]
    start = np.searchsorted(src, np.arange(len(uniq) + 1))
    kept_row = np.full(len(uniq), -1, dtype=np.int64)  # the kept row holding each distinct hash (at most one)
    kept_pos = np.full(len(uniq), -1, dtype=np.int64)  # its position in priority order
    dup_rows, of_rows = [], []
    for pos, (row, u) in enumerate(zip(rows, inv)):
        if kept_row[u] >= 0:  # the same hash was kept before: distance 0
            dup_rows.append(row)
            of_rows.append(kept_row[u])
            continue
        nb, nd = dst[start[u] : start[u + 1]], dist[start[u] : start[u + 1]]
        has = kept_row[nb] >= 0
        if has.any():
            nb, nd = nb[has], nd[has]
            best = np.lexsort((kept_pos[nb], nd))[0]  # nearest, then earliest
            dup_rows.append(row)
            of_rows.append(kept_row[nb[best]])
        else:
            kept_row[u], kept_pos[u] = row, pos
    return _result(len(vals), np.array(dup_rows, dtype=np.int64), np.array(of_rows, dtype=np.int64), uids,
                   DUPLICATE_PHASH)


# --- semantic -----------------------------------------------------------------------------------------------

def normalize_rows(embs) -> tuple[np.ndarray, np.ndarray]:
    """(float32 L2-normalised copy, valid mask): rows with NaN/inf or zero norm are invalid (left as zeros)."""
    x = np.asarray(embs, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (rows × dim), got shape {x.shape}")
    finite = np.isfinite(x).all(axis=1)
    x = np.where(finite[:, None], x, 0.0).astype(np.float32)
    norm = np.linalg.norm(x, axis=1)
    ok = finite & (norm > 1e-12)
    x[ok] /= norm[ok, None]
    x[~ok] = 0.0
    return x, ok


def sample_keys(uids: Sequence[str], seed: int = 0) -> np.ndarray:
    """uint64 key of each (uid, seed): the k-means sample is the rows with the smallest keys (`sample_rows`), so any
    engine, shard split or row order picks the same sample."""
    out = np.empty(len(uids), dtype=np.uint64)
    prefix = f"{int(seed)}\0".encode()
    for i, u in enumerate(uids):
        out[i] = int.from_bytes(hashlib.blake2b(prefix + str(u).encode(), digest_size=8).digest(), "little")
    return out


def sample_rows(keys: np.ndarray, uids: Sequence[str], size: int) -> np.ndarray:
    """Sorted indices of the `size` rows with the smallest (key, uid): the seeded k-means sample."""
    order = np.lexsort((np.asarray(list(uids), dtype=object).astype(str), np.asarray(keys, dtype=np.uint64)))
    return np.sort(order[:size])


def fit_centroids(fit: np.ndarray, n_clusters: int, seed: int = 0, max_iter: int = 50) -> np.ndarray:
    """Unit centroids of seeded k-means (scikit-learn, Lloyd, one random init) fitted on unit rows `fit`, in the
    order given (the init draws rows by position)."""
    from sklearn.cluster import KMeans

    # random init (seeded rows as centroids, as faiss does): k-means++ costs more than the whole dedup here
    km = KMeans(n_clusters=n_clusters, init="random", n_init=1, max_iter=max_iter, random_state=seed).fit(fit)
    centroids = km.cluster_centers_.astype(np.float32)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return centroids


def kmeans_labels(x: np.ndarray, n_clusters: int, seed: int = 0, sample_size: int = DEFAULT_SAMPLE_SIZE,
                  max_iter: int = 50, uids: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, unit centroids) of seeded k-means on unit rows `x` (in priority order).

    Fits on a sample of at most `sample_size` rows (DataComp and SemDeDup also cluster a sample): the rows whose
    key `sample_keys(uids, seed)` is smallest (`uids` None: row positions stand in for uids), kept in the given
    order; then assigns every row to its nearest unit centroid (`assign_clusters`). Both depend only on each row's
    uid and embedding, so the Ray engine, which assigns clusters shard by shard, gets the same labels.
    """
    n = len(x)
    if n_clusters < 1 or n_clusters > max(1, n):
        raise ValueError(f"n_clusters={n_clusters!r}: must be within [1, {max(1, n)}]")
    if n_clusters == 1:
        c = x.mean(axis=0, keepdims=True)
        return np.zeros(n, dtype=np.int64), c / max(float(np.linalg.norm(c)), 1e-12)
    if n <= sample_size:
        fit = x
    else:
        ids = [str(i) for i in range(n)] if uids is None else uids
        fit = x[sample_rows(sample_keys(ids, seed), ids, max(sample_size, n_clusters))]
    centroids = fit_centroids(fit, n_clusters, seed=seed, max_iter=max_iter)
    return assign_clusters(x, centroids), centroids


def assign_clusters(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest unit centroid (largest cosine) of each unit row."""
    return _nearest(x, centroids) if len(x) else np.zeros(0, dtype=np.int64)


def _nearest(x: np.ndarray, c: np.ndarray, block: int = 8192) -> np.ndarray:
    return np.concatenate([np.argmax(x[r : r + block] @ c.T, axis=1) for r in range(0, len(x), block)])


def _cluster_dedup(x: np.ndarray, thr: float, block_bytes: int) -> tuple[list[int], list[int]]:
    """Greedy keep-first within one cluster whose rows `x` are in visiting order: (duplicate pos, kept pos)."""
    c = len(x)
    kept = np.ones(c, dtype=bool)
    dups, ofs = [], []
    step = max(1, min(c, block_bytes // (4 * c)))
    for r0 in range(0, c, step):
        r1 = min(c, r0 + step)
        s = x[r0:r1] @ x[:r1].T  # block rows against every row up to the block's end
        cand = np.flatnonzero(_earlier_max(s, r0) >= thr)  # rows with some earlier row this close
        for p in cand:
            i = r0 + p
            row = s[p, :i]
            hits = np.flatnonzero(row >= thr)
            hits = hits[kept[hits]]
            if hits.size:
                kept[i] = False
                dups.append(i)
                ofs.append(int(hits[np.argmax(row[hits])]))
    return dups, ofs


def _earlier_max(s: np.ndarray, r0: int) -> np.ndarray:
    """Max over earlier columns (j < r0 + p) of each block row p."""
    rows, cols = s.shape
    j = np.arange(cols)[None, :]
    i = (r0 + np.arange(rows))[:, None]
    return np.where(j < i, s, -np.inf).max(axis=1) if cols else np.full(rows, -np.inf)


def semantic_duplicates(embs, uids: Sequence[str], eps: float = DEFAULT_EPS, n_clusters: int | None = None,
                        seed: int = 0, rank: Sequence[float] | None = None, active: Sequence[bool] | None = None,
                        keep: Literal["first", "hard", "easy"] = "first", sample_size: int = DEFAULT_SAMPLE_SIZE,
                        block_bytes: int = 64 << 20) -> Duplicates:
    """SemDeDup: k-means the (L2-normalised) embeddings, then within each cluster drop every row whose cosine
    to an already kept row is ≥ 1 − eps: reason `duplicate_semantic`.

    Visiting order within a cluster: `keep="first"` priority order (as the other layers); `"hard"` least
    similar to the centroid first (SemDeDup's default: keeps the atypical copy), `"easy"` most similar first.
    `n_clusters` None: ⌈√n⌉ over the valid active rows. Deterministic under `seed`.
    """
    if not 0 <= eps < 2:
        raise ValueError(f"eps={eps!r}: must be within [0, 2)")
    if keep not in ("first", "hard", "easy"):
        raise ValueError(f"keep={keep!r}: allowed values are first, hard, easy")
    x, ok = normalize_rows(embs)
    uids, act = _setup(len(x), uids, active)
    ok &= act
    rows = priority_order(uids, rank)
    rows = rows[ok[rows]]
    n = len(rows)
    if n < 2:
        return _result(len(x), np.zeros(0, np.int64), np.zeros(0, np.int64), uids, DUPLICATE_SEMANTIC)
    k = n_clusters if n_clusters is not None else math.ceil(math.sqrt(n))
    k = min(k, n)
    xs = x[rows]
    labels, centroids = kmeans_labels(xs, k, seed=seed, sample_size=sample_size, uids=uids[rows])
    to_centroid = np.einsum("ij,ij->i", xs, centroids[labels])
    thr = np.float32(1.0 - eps)
    dup_rows, of_rows = [], []
    by_cluster = np.argsort(labels, kind="stable")  # stable: priority order within each cluster
    bounds = np.searchsorted(labels[by_cluster], np.arange(k + 1))
    for c in range(k):
        members = by_cluster[bounds[c] : bounds[c + 1]]
        if len(members) < 2:
            continue
        if keep != "first":
            sign = 1.0 if keep == "hard" else -1.0
            members = members[np.argsort(sign * to_centroid[members], kind="stable")]
        d, o = _cluster_dedup(xs[members], thr, block_bytes)
        dup_rows.extend(rows[members[d]])
        of_rows.extend(rows[members[o]])
    return _result(len(x), np.array(dup_rows, dtype=np.int64), np.array(of_rows, dtype=np.int64), uids,
                   DUPLICATE_SEMANTIC)
