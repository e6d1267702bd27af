"""`mithridate report dataset`: one self-contained HTML audit of a curated dataset, plus `metrics.json`.

It reads only stage outputs (stats JSON, shards, filter decisions, export stats, and the demo web's
ground-truth manifest when there is one), so it can be rebuilt without rerunning any stage.
"""

from __future__ import annotations

import collections
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from mithridate.core import disk, options, schema, stats_files
from reports import figures, html as H

logger = logging.getLogger(__name__)
OPTOUT_REASONS = ("optout_signal", "registry_url", "registry_domain", "registry_sha256", "registry_phash",
                  "registry_artist", "optout_reupload")
BAD_ALT_REASONS = ("caption_empty", "caption_too_short", "caption_too_long", "caption_filename", "caption_spam",
                   "low_clip_score", "no_clip_score")


@dataclass(frozen=True)
class DatasetReportConfig:
    crawl: str = options.opt("mithridate-out/crawl", "crawl output folder ('' = no crawl stats)")
    shards: str = options.opt("mithridate-out/shards", "download output folder")
    filter: str = options.opt("mithridate-out/filter", "filter output folder")
    export: str = options.opt("mithridate-out/train", "export output folder ('' = not exported)")
    manifest: str = options.opt("", "ground truth: the demo web's web_manifest.parquet ('' = none)")
    clip: str = options.opt("", "`clip train` folder whose eval.json is shown ('' = none)")
    out: str = options.opt("mithridate-out/report", "report folder: dataset.html, metrics.json")
    samples: int = options.opt(24, "thumbnails per grid")


PRESETS = {"default": DatasetReportConfig(), "tiny": DatasetReportConfig(samples=12)}


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def load(cfg: DatasetReportConfig) -> dict:
    """Everything the report shows, as DataFrames and dicts."""
    shards = schema.read_folder(cfg.shards, "shard").to_pandas()
    decisions = schema.read(Path(cfg.filter) / "decisions.parquet", "decisions").to_pandas()
    rows = shards.merge(decisions, on="uid", how="left", validate="one_to_one")
    manifest = None
    if cfg.manifest:
        manifest = schema.read(cfg.manifest, "web_manifest").to_pandas().drop_duplicates("url").set_index("url")
    return {
        "rows": rows, "manifest": manifest,
        "crawl": stats_files.read_or_empty(cfg.crawl) if cfg.crawl else {},
        "download": stats_files.read_or_empty(cfg.shards),
        "filter": stats_files.read_or_empty(cfg.filter),
        "filter_config": _json(Path(cfg.filter) / "config.json"),
        "download_config": _json(Path(cfg.shards) / "config.json"),
        "export": stats_files.read_or_empty(cfg.export) if cfg.export else {},
        "clip": _json(Path(cfg.clip) / "eval.json") if cfg.clip else {},
    }


def funnel_steps(d: dict) -> list[tuple[str, int]]:
    """(stage, rows) from pairs found to rows exported."""
    rows, st = d["rows"], d["rows"]["status"].value_counts()
    steps = [("pairs found", len(rows)), ("downloaded", int(st.get("success", 0))),
             ("kept by filter", int(rows["keep"].fillna(False).sum()))]
    if d["crawl"]:
        steps.insert(0, ("pages fetched", int(d["crawl"].get("pages_fetched", 0))))
    if d["export"]:
        steps.append(("exported", int(d["export"].get("rows", 0))))
    return steps


def reason_counts(rows: pd.DataFrame) -> dict[str, int]:
    """Rows per exclusion reason (the first reason of each excluded row)."""
    return {str(k): int(v) for k, v in rows["exclusion_reason"].dropna().value_counts().items()}


def optout_metrics(d: dict) -> dict:
    """Signals seen, rows honoured, re-uploads caught, and (with ground truth) what leaked into the kept set."""
    rows = d["rows"]
    reasons = reason_counts(rows)
    out = {"signals_seen": d["download"].get("optout_signals", {}),
           "rows_with_signals": int((rows["signals"].apply(len) > 0).sum()),
           "excluded_optout": {r: reasons.get(r, 0) for r in OPTOUT_REASONS if reasons.get(r, 0)},
           "reuploads_caught": reasons.get("optout_reupload", 0)}
    m = d["manifest"]
    if m is not None:  # an opted-out work: its original on the artist's site carries a signal
        own = m["site"].str.startswith("artist-")
        opted = set(m.loc[own & (m["signals"].apply(len) > 0), "item_id"].dropna())
        item = rows["url"].map(m["item_id"])
        elsewhere = ~rows["url"].map(own).fillna(False).astype(bool)
        is_opted = item.isin(opted)
        kept, ok = rows["keep"].fillna(False).astype(bool), rows["status"] == "success"
        out["leaked_from_artist_sites"] = int((kept & is_opted & ~elsewhere).sum())
        out["leaked_reuploads"] = int((kept & is_opted & elsewhere).sum())
        out["reuploads_of_optouts_downloaded"] = int((ok & is_opted & elsewhere).sum())
        out["reuploads_of_optouts_excluded"] = int((ok & is_opted & elsewhere & ~kept).sum())
        first = rows["exclusion_reason"]
        by_optout = ok & first.isin(OPTOUT_REASONS) & item.notna()
        out["over_excluded_by_optout_layers"] = int((by_optout & ~is_opted).sum())  # works nobody opted out
    return out


# kinds whose host-less (old-form) signal was decided by a file of the host serving the image; the others
# (meta, tdmrep:meta/header/well-known, x-robots-tag of the page) by the page's host
_IMAGE_HOST_KINDS = frozenset({"robots", "ai.txt"})
ALL_HOSTS, ALL_KINDS = "all hosts", "all kinds"


def parse_signal(signal: str) -> tuple[str, str, str | None]:
    """(kind, detail, host) of one opt-out signal string; host is None for the forms that name none.

    `robots:GPTBot@127.0.0.11:40123` → ("robots", "GPTBot", "127.0.0.11:40123"); `robots:unreachable@h` →
    ("robots", "unreachable", "h"); `ai.txt@h` → ("ai.txt", "", "h"); `meta:noai` → ("meta", "noai", None);
    old forms too: `robots:GPTBot` → ("robots", "GPTBot", None), `ai.txt` → ("ai.txt", "", None). The kind is
    the text before the first ':' or '@'; the host (a netloc, lower-cased) is everything after the first '@'.
    """
    if not isinstance(signal, str) or not signal.strip():
        raise ValueError(f"opt-out signal {signal!r} is empty: expected e.g. 'robots:GPTBot@example.org', "
                         "'ai.txt@example.org' or 'meta:noai'")
    head, at, host = signal.strip().partition("@")
    kind, _, detail = head.partition(":")
    if not kind.strip() or (at and not host.strip()):
        raise ValueError(f"opt-out signal {signal!r}: expected <kind>[:<detail>][@<host>] with a non-empty kind "
                         "and, after '@', a non-empty host")
    return kind.strip().lower(), detail.strip(), host.strip().lower() if at else None


def _netloc(url) -> str:
    return urlsplit(url).netloc.lower() if isinstance(url, str) and url else "?"


def deciding_signal(signal: str, url: str, page_url: str | None, image_kinds=_IMAGE_HOST_KINDS) -> tuple[str, str, str]:
    """(kind, detail, deciding host) of a signal on the pair (`url`, `page_url`): the host it names, else the
    image's host for `image_kinds` (robots.txt, ai.txt: the files of the host serving the image), else the page's
    host (robots meta, TDMRep, the page's X-Robots-Tag); the image's host when there is no page."""
    kind, detail, host = parse_signal(signal)
    if host is None:
        host = _netloc(url if kind in image_kinds or not page_url else page_url)
    return kind, detail, host


def row_signals(signals, optout, url: str, page_url: str | None) -> list[tuple[str, str, str]]:
    """(kind, detail, deciding host) of every signal of a shard row: its `signals` (seen at crawl) and what its
    `optout` column (';'-joined) adds to them (seen at download, on the image's response: the image's host)."""
    crawl = [s for s in (signals if signals is not None else []) if isinstance(s, str) and s.strip()]
    recorded = [s for s in optout.split(";") if s.strip()] if isinstance(optout, str) else []
    at_download = collections.Counter(recorded) - collections.Counter(crawl)  # a multiset: page and image may agree
    return ([deciding_signal(s, url, page_url) for s in crawl]
            + [deciding_signal(s, url, None) for s in at_download.elements()])


def optout_signal_table(rows: pd.DataFrame, manifest: pd.DataFrame | None = None) -> list[dict]:
    """One record per opt-out signal kind × deciding host, then the kind over all hosts, then every signal.

    `rows`: shard rows merged with their filter decisions (url, page_url, signals, optout, status, keep, reasons).
    Per record: `rows` carrying that kind on that host, split into `excluded_optout` (not fetched, or excluded by an
    opt-out layer of the filter), `excluded_other` (excluded for another reason) and `kept`; `details` lists the
    details seen (agents, directives, `unreachable`). With the demo web's ground-truth `manifest` (indexed by url,
    with page_url and signals): `truth_images` whose true signals include that kind on that host, `truth_found` of
    them in the rows, `truth_excluded` (found, no row kept), `truth_downloaded` (a row downloaded),
    `truth_leaked` (a row kept despite the opt-out) and `truth_compliance` = excluded / found. A row or image
    carrying several signals of a kind is counted once in every record.
    """
    n = len(rows)
    urls = rows["url"].tolist()
    keep = rows["keep"].fillna(False).astype(bool).to_numpy() if "keep" in rows else np.zeros(n, bool)
    reasons = rows["reasons"] if "reasons" in rows else pd.Series([None] * n, index=rows.index)
    by_optout = ((rows["status"] == schema.STATUS_OPTED_OUT).to_numpy() | np.array(
        [rs is not None and not isinstance(rs, float) and any(r in OPTOUT_REASONS for r in rs) for rs in reasons],
        dtype=bool)) & ~keep
    carried, truth = collections.defaultdict(set), collections.defaultdict(set)
    details = collections.defaultdict(set)
    page_urls = rows["page_url"].tolist() if "page_url" in rows else [None] * n
    optouts = rows["optout"].tolist() if "optout" in rows else [None] * n
    for i, (sig, opt, url, page) in enumerate(zip(rows["signals"].tolist(), optouts, urls, page_urls)):
        for kind, detail, host in row_signals(sig, opt, url, page):
            carried[kind, host].add(i)
            details[kind, host].add(detail)
    if manifest is not None:  # the demo web sends X-Robots-Tag on image responses: the image's host decides
        for url, page, sigs in zip(manifest.index, manifest["page_url"], manifest["signals"]):
            for s in (x for x in (sigs if sigs is not None else []) if isinstance(x, str) and x.strip()):
                kind, detail, host = deciding_signal(s, url, page, _IMAGE_HOST_KINDS | {"x-robots-tag"})
                truth[kind, host].add(url)
                details[kind, host].add(detail)
    found, kept = set(urls), {u for u, k in zip(urls, keep) if k}
    downloaded = {u for u, st in zip(urls, rows["status"]) if st == schema.STATUS_SUCCESS}

    def record(kind: str, host: str, keys: list) -> dict:
        ix = np.fromiter(set().union(*(carried.get(k, set()) for k in keys)), dtype=np.int64)
        out = {"kind": kind, "host": host,
               "details": ", ".join(sorted(set().union(*(details[k] for k in keys)) - {""})),
               "rows": len(ix), "excluded_optout": int(by_optout[ix].sum()),
               "excluded_other": int((~by_optout[ix] & ~keep[ix]).sum()), "kept": int(keep[ix].sum())}
        if manifest is not None:
            imgs = set().union(*(truth.get(k, set()) for k in keys))
            f = imgs & found
            out.update({"truth_images": len(imgs), "truth_found": len(f), "truth_excluded": len(f - kept),
                        "truth_downloaded": len(f & downloaded), "truth_leaked": len(f & kept),
                        "truth_compliance": round(len(f - kept) / len(f), 4) if f else None})
        return out

    keys = sorted(set(carried) | set(truth))
    table = []
    for kind in sorted({k for k, _ in keys}):
        mine = [k for k in keys if k[0] == kind]
        table += [record(kind, host, [(kind, host)]) for _, host in mine]
        table.append(record(kind, ALL_HOSTS, mine))
    if keys:
        table.append(record(ALL_KINDS, ALL_HOSTS, keys))
    return table


_SIGNAL_COLUMNS = {"kind": "signal", "host": "deciding host", "details": "details", "rows": "rows carrying it",
                   "excluded_optout": "excluded by opt-out", "excluded_other": "excluded otherwise", "kept": "kept",
                   "truth_images": "truth: images", "truth_found": "found", "truth_excluded": "excluded",
                   "truth_downloaded": "downloaded", "truth_leaked": "leaked (kept)",
                   "truth_compliance": "compliance"}


def _optout_section(d: dict, table: list[dict]) -> str:
    """The opt-out section: the summary, then `table` (`optout_signal_table`, computed once for metrics too)."""
    summary = H.table([{"metric": k, "value": json.dumps(v) if isinstance(v, dict) else v}
                       for k, v in optout_metrics(d).items()])
    policy = (f"download policy: {d['download_config'].get('policy', '?')} · filter opt-out policy: "
              f"{d['filter_config'].get('optout', '?')}")
    note = ("Deciding host: the host whose file decided (robots.txt, ai.txt, /.well-known/tdmrep.json), else the "
            "page's host (robots meta, TDMRep meta/header, the page's X-Robots-Tag) or the image's (X-Robots-Tag "
            "seen at download). A row carrying several signals counts once in each total. ")
    if d["manifest"] is not None:
        note += ("Truth: the demo web's images whose planted signals include that kind on that host; excluded = "
                 "found and no row kept, leaked = a row kept despite the opt-out, compliance = excluded / found.")
    recs = [{_SIGNAL_COLUMNS[k]: v for k, v in r.items()} for r in table]
    return (summary + f"<h3>by signal kind and deciding host</h3><p>{H.esc(policy)}</p>" + H.note(note)
            + H.table(recs))


def ground_truth_metrics(d: dict) -> dict:
    """Precision/recall of the filters that flag a bad alt text, against the demo web's `alt_correct`."""
    m = d["manifest"]
    if m is None:
        return {}
    ok = d["rows"][(d["rows"]["status"] == "success") & d["rows"]["url"].isin(m.index)]
    truth_bad = ~ok["url"].map(m["alt_correct"]).astype(bool)
    flagged = ok["reasons"].apply(lambda rs: any(r in BAD_ALT_REASONS for r in (rs if rs is not None else [])))
    tp = int((flagged & truth_bad).sum())
    prec = tp / max(int(flagged.sum()), 1)
    rec = tp / max(int(truth_bad.sum()), 1)
    by_kind = ok.assign(kind=ok["url"].map(m["alt_kind"]), flagged=flagged).groupby("kind")["flagged"].mean()
    out = {"bad_alt_precision": round(prec, 4), "bad_alt_recall": round(rec, 4), "bad_alt_rows": int(truth_bad.sum()),
           "flagged_rate_by_alt_kind": {k: round(float(v), 4) for k, v in by_kind.items()}}
    kind = ok["url"].map(m["alt_kind"])
    scored = ok["clip_score"].notna() & kind.isin(["good", "long", "mismatched", "spam"])
    if scored.any() and truth_bad[scored].nunique() == 2:
        from sklearn.metrics import roc_auc_score

        out["clip_auc_correct_vs_mismatched_spam"] = round(float(roc_auc_score(
            ~truth_bad[scored], ok.loc[scored, "clip_score"])), 4)
    return out


def _score_section(d: dict) -> str:
    rows, fc, fs = d["rows"], d["filter_config"], d["filter"]
    parts = []
    ok = rows[rows["status"] == "success"]
    if ok["clip_score"].notna().any():
        lines = {}
        if fs.get("clip_threshold_effective") is not None:
            lines["threshold"] = float(fs["clip_threshold_effective"])
        m = d["manifest"]
        groups = None
        if m is not None:
            known = ok[ok["url"].isin(m.index)]
            corr = known["url"].map(m["alt_correct"]).astype(bool)
            groups = {"correct alt text": known.loc[corr, "clip_score"], "wrong alt text": known.loc[~corr, "clip_score"]}
        parts.append(H.figure(figures.histogram(ok["clip_score"], "CLIP score (image–text cosine)", "clip_score",
                                                lines, groups), f"encoder: {fs.get('encoder', '?')}"))
    if ok["aesthetic_score"].notna().any():
        lines = {"threshold": float(fc["aesthetic_threshold"])} if fc.get("aesthetic_threshold") is not None else {}
        parts.append(H.note("The aesthetic head of the embedded default was trained on degraded copies (blur, "
                            "heavy JPEG, noise, low-res upscale, watermark) of known severity served by the demo "
                            "web, not on human ratings: it measures technical quality, not beauty."))
        parts.append(H.figure(figures.histogram(ok["aesthetic_score"], "aesthetic / quality score", "score", lines),
                              "aesthetic score of downloaded images"))
    return "".join(parts) or "<p>No scores.</p>"


def _grid(rows: pd.DataFrame, n: int, reason_col: str = "exclusion_reason") -> str:
    items = [(figures.thumbnail_png(r.jpg), r.caption or "(empty alt)", getattr(r, reason_col) or "kept")
             for r in rows.head(n).itertuples() if r.jpg is not None]
    return H.grid(items) if items else "<p><em>none</em></p>"


def _samples_section(d: dict, n: int) -> str:
    rows = d["rows"][d["rows"]["status"] == "success"]
    kept = rows[rows["keep"].fillna(False)]
    rejected = rows[~rows["keep"].fillna(False)]
    per = max(2, n // max(rejected["exclusion_reason"].nunique(), 1))
    rej = pd.concat([g.head(per) for _, g in rejected.groupby("exclusion_reason")]) if len(rejected) else rejected
    return f"<h3>kept</h3>{_grid(kept, n)}<h3>rejected (with reason)</h3>{_grid(rej, 3 * n)}"


def _domains_section(d: dict) -> str:
    rows = d["rows"]
    table = (rows.assign(kept=rows["keep"].fillna(False)).groupby("domain")
             .agg(pairs=("uid", "size"), downloaded=("status", lambda s: int((s == "success").sum())),
                  kept=("kept", "sum")).reset_index().sort_values("pairs", ascending=False))
    recs = [{k: (int(v) if isinstance(v, (np.integer,)) else v) for k, v in r.items()} for r in table.to_dict("records")]
    lic = d["export"].get("licences", {})
    return H.table(recs) + ("<h3>licences of exported rows</h3>" +
                            H.table([{"licence": k, "rows": v} for k, v in sorted(lic.items())]) if lic else "")


def metrics(d: dict) -> dict:
    """The flat, slash-namespaced metrics written to metrics.json."""
    out = {f"funnel/{k.replace(' ', '_')}": v for k, v in funnel_steps(d)}
    out.update({f"excluded/{k}": v for k, v in reason_counts(d["rows"]).items()})
    out.update({f"optout/{k}": v for k, v in optout_metrics(d).items()})
    out["optout/by_signal"] = optout_signal_table(d["rows"], d["manifest"])
    out.update({f"ground_truth/{k}": v for k, v in ground_truth_metrics(d).items()})
    return out


def sections(cfg: DatasetReportConfig) -> tuple[list[tuple[str, str]], dict]:
    """(heading, html) sections of the dataset audit and its flat metrics."""
    d = load(cfg)
    m = metrics(d)
    reasons = reason_counts(d["rows"])
    dup = {k: v for k, v in reasons.items() if k.startswith("duplicate_")}
    out = [
        ("Funnel", H.figure(figures.funnel(funnel_steps(d), "rows at each stage"), "pages → pairs → kept")
         + H.table([{"stage": s, "rows": v} for s, v in funnel_steps(d)])),
        ("Why rows were excluded", H.figure(figures.bars(reasons, "excluded rows by first reason"), "reasons")
         + H.table([{"reason": k, "rows": v} for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])])),
        ("Scores", _score_section(d)),
        ("Opt-out compliance", _optout_section(d, m["optout/by_signal"])),
        ("Duplicates per layer", H.table([{"layer": k, "rows": v} for k, v in sorted(dup.items())])),
        ("Domains and licences", _domains_section(d)),
        ("Samples", _samples_section(d, cfg.samples)),
    ]
    if d["clip"]:
        out.insert(2, ("Encoder (compact CLIP)", H.table([{"metric": k, "value": v} for k, v in
                                                         sorted(d["clip"].items()) if not isinstance(v, (dict, list))])))
    gt = ground_truth_metrics(d)
    if gt:
        out.append(("Against the demo web's ground truth", H.table(
            [{"metric": k, "value": json.dumps(v) if isinstance(v, dict) else v} for k, v in gt.items()])))
    return out, m


def build(cfg: DatasetReportConfig) -> Path:
    """Write `<out>/dataset.html` and `<out>/metrics.json`; returns the HTML path."""
    out = Path(cfg.out)
    options.write_config(cfg, out)
    parts, m = sections(cfg)
    page = H.page("Dataset audit", parts, H.note(f"shards: {cfg.shards} · filter: {cfg.filter}"))
    disk.write_text(out / "dataset.html", page)
    disk.write_text(out / "metrics.json", json.dumps(m, indent=2, sort_keys=True, default=str) + "\n")
    logger.info("dataset report: %s", out / "dataset.html")
    return out / "dataset.html"
