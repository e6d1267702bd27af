"""Do-not-train: a local opt-out registry, re-uploads of opted-out works, and the opt-out signals recorded at download.

Three sources of an exclusion, each a per-row reason (or None):

- `match(rows, registry)`: entries of a do-not-train registry file (like Spawning's Do-Not-Train registry,
  but local) by URL, domain, sha256, pHash or artist → `registry_url`, `registry_domain`, `registry_sha256`,
  `registry_phash`, `registry_artist`.
- `reupload_matches(...)`: rows on *other* domains that show an opted-out original (pHash within k, or image
  embeddings with cosine ≥ 1 − eps) → `optout_reupload`. An opt-out attached to a URL (a header, a meta tag,
  robots.txt) does not follow the image when an aggregator re-uploads it; this does.
- `signal_reasons(table, policy)`: the opt-out signals the crawl and download recorded (`signals`, `optout`,
  `status == "opted_out"`) → `optout_signal`.

Registry file format (`load_registry`)
--------------------------------------
One entry per work, artist or site; each entry has at least one of the match fields, plus an optional note:

    url      absolute http(s) URL of an image or page; a trailing `*` makes it a prefix
             (`https://example.org/gallery/*`). Compared after normalisation (lower-case scheme and host,
             default port and fragment dropped) with the row's `url` and `page_url`.
    domain   host or host:port. Without a port it matches the host on any port, and its subdomains
             (`example.org` matches `img.example.org`); with a port only that host:port.
    sha256   64 hex chars: sha256 of the original image bytes (the shard's `sha256`).
    phash    16 hex chars: 64-bit pHash (`curation.select.dedup.phash`); matches within Hamming distance `phash_k`.
    artist   a name. Matches rows whose `artist` column (provenance, when known) equals it, ignoring case,
             and rows whose caption credits it: "… by <artist>", "<artist> style", "in the style of <artist>".
    note     free text, kept for the audit (who asked, when).

- `.json`: a list of entry objects, or an object with an `"entries"` list (other top-level keys, such as
  `"name"` or `"description"`, are ignored). Missing keys, null and "" mean absent.
- `.csv` / `.tsv`: a header row naming the fields (any subset, any order), one entry per line, empty cell =
  absent; blank lines and lines starting with `#` are skipped.

Errors (missing file, unreadable JSON/CSV, unknown field names, an entry without any match field, a malformed
value) are one-line `ValueError`s (`FileNotFoundError` for a missing file) naming the file and the entry.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from curation.select import dedup

REGISTRY_URL = "registry_url"
REGISTRY_DOMAIN = "registry_domain"
REGISTRY_SHA256 = "registry_sha256"
REGISTRY_PHASH = "registry_phash"
REGISTRY_ARTIST = "registry_artist"
OPTOUT_REUPLOAD = "optout_reupload"
OPTOUT_SIGNAL = "optout_signal"
MATCH_FIELDS = ("url", "domain", "sha256", "phash", "artist")
FIELDS = MATCH_FIELDS + ("note",)
# the order `match` checks (first match wins): the work itself before where it was found
MATCH_ORDER = (REGISTRY_SHA256, REGISTRY_PHASH, REGISTRY_URL, REGISTRY_DOMAIN, REGISTRY_ARTIST)
DEFAULT_COS_EPS = 0.06  # cosine ≥ 0.94: clip-retrieval's near-duplicate threshold on CLIP image embeddings
POLICIES = ("honor", "record", "ignore")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_DOMAIN = re.compile(r"^(?:\[[0-9a-f:.]+\]|[a-z0-9_\-.]+)(?::\d{1,5})?$")


# --- normalisation ------------------------------------------------------------------------------------------

def normalize_url(url: str) -> str:
    """Lower-case scheme and host, drop the default port and the fragment; path and query are kept."""
    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def _host_port(domain: str) -> tuple[str, str | None]:
    d = domain.strip().lower()
    if d.startswith("["):  # [v6]:port
        host, _, rest = d.partition("]")
        return host + "]", rest[1:] if rest.startswith(":") else None
    host, sep, port = d.rpartition(":")
    return (host, port) if sep and port.isdigit() else (d, None)


def _domain_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rsplit("@", 1)[-1].lower()


# --- the registry -------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Registry:
    """A loaded registry: its entries plus lookup structures (build with `load_registry` or `from_entries`)."""

    source: str
    entries: tuple[dict, ...]
    urls: frozenset = field(default=frozenset(), repr=False)
    url_prefixes: tuple = field(default=(), repr=False)
    domains: dict = field(default_factory=dict, repr=False)  # host -> set of ports (None: any port)
    sha256s: frozenset = field(default=frozenset(), repr=False)
    phashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64), repr=False)
    artists: tuple = field(default=(), repr=False)

    @classmethod
    def from_entries(cls, entries: Iterable[dict], source: str = "<entries>") -> "Registry":
        """Validate and index entries (dicts of FIELDS; None/"" = absent)."""
        clean = []
        for n, raw in enumerate(entries, 1):
            clean.append(_check_entry(raw, source, f"entry {n}"))
        return cls._index(tuple(clean), source)

    @classmethod
    def _index(cls, entries: tuple[dict, ...], source: str) -> "Registry":
        urls, prefixes, domains, shas, ph, artists = set(), [], {}, set(), [], []
        for e in entries:
            if "url" in e:
                (prefixes.append(e["url"][:-1]) if e["url"].endswith("*") else urls.add(e["url"]))
            if "domain" in e:
                host, port = _host_port(e["domain"])
                domains.setdefault(host, set()).add(port)
            if "sha256" in e:
                shas.add(e["sha256"])
            if "phash" in e:
                ph.append(int(e["phash"], 16))
            if "artist" in e:
                artists.append(e["artist"])
        return cls(source, entries, frozenset(urls), tuple(sorted(set(prefixes))), domains, frozenset(shas),
                   np.array(sorted(set(ph)), dtype=np.uint64), tuple(dict.fromkeys(artists)))

    def __len__(self) -> int:
        return len(self.entries)

    def counts(self) -> dict[str, int]:
        """Entries per match field (an entry with two fields counts twice)."""
        return {f: sum(1 for e in self.entries if f in e) for f in MATCH_FIELDS}


def _check_entry(raw, source: str, where: str) -> dict:
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: {where} is a {type(raw).__name__}, expected an object with fields "
                         f"{', '.join(FIELDS)}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ValueError(f"{source}: {where}: unknown fields {unknown}; allowed: {', '.join(FIELDS)}")
    e = {}
    for k, v in raw.items():
        if v is None or (isinstance(v, str) and not v.strip()):
            continue
        if not isinstance(v, str):
            raise ValueError(f"{source}: {where}: field {k!r} must be a string, got {v!r}")
        e[k] = v.strip()
    if not any(f in e for f in MATCH_FIELDS):
        raise ValueError(f"{source}: {where} has none of the match fields {', '.join(MATCH_FIELDS)}")
    if "url" in e:
        u = e["url"]
        star = u.endswith("*")
        parts = urlsplit(u[:-1] if star else u)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{source}: {where}: url {u!r} is not an absolute http(s) URL")
        e["url"] = normalize_url(u[:-1] if star else u) + ("*" if star else "")  # "https://h*" → "https://h/*"
    if "domain" in e:
        d = e["domain"].lower()
        if d.startswith("*."):
            d = d[2:]
        if not _DOMAIN.match(d):
            raise ValueError(f"{source}: {where}: domain {e['domain']!r} is not a host or host:port")
        e["domain"] = d
    for name, pattern, what in (("sha256", _HEX64, "64 hex chars"), ("phash", _HEX16, "16 hex chars")):
        if name in e:
            v = e[name].lower()
            if not pattern.match(v):
                raise ValueError(f"{source}: {where}: {name} {e[name]!r} is not {what}")
            e[name] = v
    return e


def load_registry(path: str | Path) -> Registry:
    """Read a registry file (.json, .csv or .tsv; see the module docstring) and index it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"do-not-train registry not found: {path}")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if isinstance(data, dict):
            if "entries" not in data or not isinstance(data["entries"], list):
                raise ValueError(f"{path}: a JSON object registry needs an \"entries\" list")
            data = data["entries"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of entries or an object with \"entries\"")
        entries = [_check_entry(raw, str(path), f"entry {n}") for n, raw in enumerate(data, 1)]
    elif suffix in (".csv", ".tsv"):
        entries = _read_table(text, str(path), "\t" if suffix == ".tsv" else ",")
    else:
        raise ValueError(f"{path}: unknown registry format {suffix or '(no extension)'!r}; use .json, .csv or .tsv")
    return Registry._index(tuple(entries), str(path))


def _read_table(text: str, source: str, delimiter: str) -> list[dict]:
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"{source}: empty registry (no header row)")
    try:
        rows = list(csv.reader(io.StringIO("\n".join(line for _, line in lines)), delimiter=delimiter))
    except csv.Error as err:
        raise ValueError(f"{source}: not readable as {'TSV' if delimiter == chr(9) else 'CSV'} ({err})") from None
    header = [h.strip().lower() for h in rows[0]]
    unknown = [h for h in header if h not in FIELDS]
    if unknown:
        raise ValueError(f"{source}: unknown fields {unknown} in the header; allowed: {', '.join(FIELDS)}")
    if len(set(header)) != len(header):
        raise ValueError(f"{source}: repeated field names in the header {header}")
    entries = []
    for (lineno, _), row in zip(lines[1:], rows[1:]):
        if len(row) > len(header):
            raise ValueError(f"{source}: line {lineno} has {len(row)} cells for {len(header)} header fields")
        entries.append(_check_entry(dict(zip(header, row)), source, f"line {lineno}"))
    return entries


# --- matching -----------------------------------------------------------------------------------------------

def _col(rows, name: str):
    """A column as a list, or None when absent (pandas DataFrame, pyarrow Table or dict of lists)."""
    if hasattr(rows, "column_names"):  # pyarrow
        return rows[name].to_pylist() if name in rows.column_names else None
    if hasattr(rows, "columns"):  # pandas
        return rows[name].tolist() if name in rows.columns else None
    return list(rows[name]) if name in rows else None


def _str(v) -> str | None:
    return None if dedup.is_missing(v) else str(v)


def artist_pattern(artists: Sequence[str]) -> re.Pattern | None:
    """Regex of captions that credit one of `artists`: "by X", "X style", "(in the) style of X" (any case)."""
    if not artists:
        return None
    names = "|".join(re.escape(a) for a in sorted(set(artists), key=len, reverse=True))
    name = rf"(?<![\w@])@?(?:{names})(?!\w)"
    return re.compile(rf"\bby\s+{name}|{name}(?:'s)?[\s\-]+style\b|\bstyle\s+of\s+{name}", re.IGNORECASE)


def match(rows, registry: Registry, phash_k: int = dedup.DEFAULT_PHASH_K) -> np.ndarray:
    """Per row: the first registry reason that applies (see MATCH_ORDER) or None.

    `rows` (DataFrame, pyarrow Table or dict of lists) needs `url`; it may have `page_url`, `domain` (else taken
    from `url`), `sha256`, `phash` (16 hex; else computed from `jpg` when that column is there), `artist`
    (provenance; null when unknown) and `text` (the caption, for "by <artist>").
    """
    urls = _col(rows, "url")
    if urls is None:
        raise ValueError("registry.match: rows need a 'url' column")
    n = len(urls)
    out = np.full(n, None, dtype=object)
    found = {r: np.zeros(n, dtype=bool) for r in MATCH_ORDER}

    if registry.sha256s:
        shas = _col(rows, "sha256") or [None] * n
        found[REGISTRY_SHA256] = np.array([_str(s) is not None and _str(s).lower() in registry.sha256s
                                           for s in shas], dtype=bool)
    if len(registry.phashes):
        ph = _col(rows, "phash")
        if ph is None and _col(rows, "jpg") is not None:
            ph = dedup.phashes(_col(rows, "jpg"))
        if ph is not None:
            vals, ok = dedup.phash_ints([_str(p) for p in ph])
            idx = np.flatnonzero(ok)
            i, _, _ = dedup.hamming_pairs(vals[idx], registry.phashes, k=phash_k)
            found[REGISTRY_PHASH][idx[i]] = True
    if registry.urls or registry.url_prefixes:
        pages = _col(rows, "page_url") or [None] * n
        found[REGISTRY_URL] = np.array([_url_listed(u, registry) or _url_listed(p, registry)
                                        for u, p in zip(urls, pages)], dtype=bool)
    if registry.domains:
        doms = _col(rows, "domain") or [None] * n
        found[REGISTRY_DOMAIN] = np.array([_domain_listed(_str(d) or (_domain_of(u) if _str(u) else None), registry)
                                           for d, u in zip(doms, urls)], dtype=bool)
    if registry.artists:
        wanted = {a.casefold() for a in registry.artists}
        pattern = artist_pattern(registry.artists)
        arts = _col(rows, "artist") or [None] * n
        texts = _col(rows, "caption") or [None] * n
        found[REGISTRY_ARTIST] = np.array(
            [(_str(a) is not None and _str(a).casefold() in wanted) or
             (_str(t) is not None and pattern.search(_str(t)) is not None) for a, t in zip(arts, texts)], dtype=bool)
    for reason in reversed(MATCH_ORDER):  # earlier reasons overwrite later ones
        out[found[reason]] = reason
    return out


def _url_listed(url, registry: Registry) -> bool:
    url = _str(url)
    if not url:
        return False
    try:
        u = normalize_url(url)
    except ValueError:
        return False
    return u in registry.urls or any(u.startswith(p) for p in registry.url_prefixes)


def _domain_listed(domain: str | None, registry: Registry) -> bool:
    if not domain:
        return False
    host, port = _host_port(domain)
    labels = host.split(".")
    is_ip = host.startswith("[") or all(x.isdigit() for x in labels)
    candidates = [host] if is_ip else [".".join(labels[i:]) for i in range(len(labels))]
    for h in candidates:
        ports = registry.domains.get(h)
        if ports is not None and (None in ports or port in ports):
            return True
    return False


# --- re-uploads ---------------------------------------------------------------------------------------------

class Reuploads(NamedTuple):
    original: np.ndarray  # int per candidate: index into the originals, -1 when none
    via: np.ndarray  # object per candidate: "phash", "embedding" or None
    distance: np.ndarray  # float per candidate: Hamming distance (phash) or 1 − cosine (embedding); NaN if none

    @property
    def reasons(self) -> np.ndarray:
        """`optout_reupload` where a candidate re-uploads an original, else None."""
        return np.where(self.original >= 0, OPTOUT_REUPLOAD, None).astype(object)


def reupload_matches(candidate_phashes: Sequence[str | None] | None, candidate_embs, originals_phashes:
                     Sequence[str | None] | None, originals_embs, phash_k: int = dedup.DEFAULT_PHASH_K,
                     cos_eps: float = DEFAULT_COS_EPS, candidate_domains: Sequence[str | None] | None = None,
                     original_domains: Sequence[str | None] | None = None, block: int = 4096) -> Reuploads:
    """Which opted-out original each candidate row re-uploads, by pHash (Hamming ≤ phash_k) or by image
    embedding (cosine ≥ 1 − cos_eps); pass None for a layer you do not have (phashes or embeddings).

    A pHash match wins over an embedding match; among several originals the nearest wins (ties: the lowest
    index). With both domain lists given, an original never matches a candidate on its own domain: the artist
    re-posting their own work is not a re-upload, and the original itself is not its own copy.
    Rows with a null pHash or a NaN/zero embedding match nothing on that layer.
    """
    n = _length(candidate_phashes, candidate_embs)
    m = _length(originals_phashes, originals_embs)
    original = np.full(n, -1, dtype=np.int64)
    via = np.full(n, None, dtype=object)
    distance = np.full(n, np.nan, dtype=np.float64)
    if n == 0 or m == 0:
        return Reuploads(original, via, distance)
    same_domain = None
    if candidate_domains is not None and original_domains is not None:
        if len(candidate_domains) != n or len(original_domains) != m:
            raise ValueError("reupload_matches: domain lists must match the candidates and originals in length")
        codes: dict[str, int] = {}  # domain → int; a null domain gets a code of its own (-1 - row)
        cd = np.array([codes.setdefault(d.lower(), len(codes)) if (d := _str(x)) else -1 - i
                       for i, x in enumerate(candidate_domains)], dtype=np.int64)
        od = np.array([codes.setdefault(d.lower(), len(codes)) if (d := _str(x)) else -(1 << 40) - i
                       for i, x in enumerate(original_domains)], dtype=np.int64)
        same_domain = (cd, od)

    def allowed(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Broadcasting: True where candidate i and original j are on different domains."""
        if same_domain is None:
            return np.ones(np.broadcast_shapes(np.shape(i), np.shape(j)), dtype=bool)
        return same_domain[0][i] != same_domain[1][j]

    if candidate_phashes is not None and originals_phashes is not None:
        cv, cok = dedup.phash_ints([_str(p) for p in candidate_phashes])
        ov, ook = dedup.phash_ints([_str(p) for p in originals_phashes])
        ci, oi = np.flatnonzero(cok), np.flatnonzero(ook)
        i, j, d = dedup.hamming_pairs(cv[ci], ov[oi], k=phash_k)
        i, j = ci[i], oi[j]
        keep = allowed(i, j)
        i, j, d = i[keep], j[keep], d[keep].astype(np.float64)
        order = np.lexsort((j, d, i))  # per candidate: nearest, then lowest original index
        i, j, d = i[order], j[order], d[order]
        first = np.r_[True, i[1:] != i[:-1]] if len(i) else np.zeros(0, dtype=bool)
        original[i[first]], distance[i[first]], via[i[first]] = j[first], d[first], "phash"
    if candidate_embs is not None and originals_embs is not None:
        cx, cok = dedup.normalize_rows(candidate_embs)
        ox, ook = dedup.normalize_rows(originals_embs)
        if cx.shape[1] != ox.shape[1]:
            raise ValueError(f"reupload_matches: embedding dims differ ({cx.shape[1]} vs {ox.shape[1]})")
        todo = np.flatnonzero(cok & (original < 0))
        oi = np.flatnonzero(ook)
        for r0 in range(0, len(todo), block):
            rows = todo[r0 : r0 + block]
            s = cx[rows] @ ox[oi].T
            s[~allowed(rows[:, None], oi[None, :])] = -np.inf
            best = np.argmax(s, axis=1) if len(oi) else np.zeros(len(rows), dtype=np.int64)
            sim = s[np.arange(len(rows)), best] if len(oi) else np.full(len(rows), -np.inf)
            hit = sim >= 1.0 - cos_eps
            original[rows[hit]] = oi[best[hit]]
            distance[rows[hit]] = 1.0 - sim[hit]
            via[rows[hit]] = "embedding"
    return Reuploads(original, via, distance)


def _length(phashes, embs) -> int:
    if phashes is not None and embs is not None and len(phashes) != len(embs):
        raise ValueError(f"reupload_matches: {len(phashes)} pHashes but {len(embs)} embeddings")
    if phashes is not None:
        return len(phashes)
    return 0 if embs is None else len(embs)


# --- recorded signals ---------------------------------------------------------------------------------------

def optout_mask(table) -> np.ndarray:
    """True where a row carries an opt-out: status `opted_out`, a recorded `optout`, or any `signals`."""
    cols = {c: _col(table, c) for c in ("status", "optout", "signals")}
    present = [v for v in cols.values() if v is not None]
    if not present:
        raise ValueError("optout_mask: the table has none of the columns status, optout, signals")
    n = len(present[0])
    status, optout, signals = (cols[c] if cols[c] is not None else [None] * n for c in ("status", "optout", "signals"))
    return np.array([s == "opted_out" or _str(o) is not None or (sig is not None and len(sig) > 0)
                     for s, o, sig in zip(status, optout, signals)], dtype=bool)


def signal_reasons(table, policy: str = "honor") -> np.ndarray:
    """Per row: `optout_signal` or None, from the signals recorded at crawl and download.

    Rows with status `opted_out` (not fetched: the download honoured a signal) always get it: they have no
    image, and their exclusion needs a reason. With policy `honor`, so do rows fetched under `record` that
    carry an opt-out (`optout` set, or non-empty `signals`). With `record` or `ignore` those rows get None: the
    signal stays visible in the shard's columns, and the caller decides what to keep.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r}: allowed values are {', '.join(POLICIES)}")
    status = _col(table, "status")
    if status is None:
        raise ValueError("signal_reasons: the table needs a 'status' column (a shard table)")
    flagged = optout_mask(table) if policy == "honor" else np.array([s == "opted_out" for s in status], dtype=bool)
    return np.where(flagged, OPTOUT_SIGNAL, None).astype(object)
