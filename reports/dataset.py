"""`mithridate report dataset`: one self-contained HTML audit of a curated dataset, plus `metrics.json`.

It reads only stage outputs (stats JSON, shards, filter decisions, export stats, and the demo web's
ground-truth manifest when there is one), so it can be rebuilt without rerunning any stage.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from curation import options, schema
from reports import figures
from reports import html as H

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
        "crawl": _json(Path(cfg.crawl) / "_stats.json") if cfg.crawl else {},
        "download": _json(Path(cfg.shards) / "_stats.json"),
        "filter": _json(Path(cfg.filter) / "_stats.json"),
        "filter_config": _json(Path(cfg.filter) / "config.json"),
        "export": _json(Path(cfg.export) / "_stats.json") if cfg.export else {},
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
    items = [(figures.thumbnail_png(r.jpg), r.text or "(empty alt)", getattr(r, reason_col) or "kept")
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
    out.update({f"ground_truth/{k}": v for k, v in ground_truth_metrics(d).items()})
    return out


def sections(cfg: DatasetReportConfig) -> tuple[list[tuple[str, str]], dict]:
    """(heading, html) sections of the dataset audit and its flat metrics."""
    d = load(cfg)
    reasons = reason_counts(d["rows"])
    dup = {k: v for k, v in reasons.items() if k.startswith("duplicate_")}
    out = [
        ("Funnel", H.figure(figures.funnel(funnel_steps(d), "rows at each stage"), "pages → pairs → kept")
         + H.table([{"stage": s, "rows": v} for s, v in funnel_steps(d)])),
        ("Why rows were excluded", H.figure(figures.bars(reasons, "excluded rows by first reason"), "reasons")
         + H.table([{"reason": k, "rows": v} for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])])),
        ("Scores", _score_section(d)),
        ("Opt-out compliance", H.table([{"metric": k, "value": json.dumps(v) if isinstance(v, dict) else v}
                                        for k, v in optout_metrics(d).items()])),
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
    return out, metrics(d)


def build(cfg: DatasetReportConfig) -> Path:
    """Write `<out>/dataset.html` and `<out>/metrics.json`; returns the HTML path."""
    out = Path(cfg.out)
    options.write_config(cfg, out)
    parts, m = sections(cfg)
    page = H.page("Dataset audit", parts, H.note(f"shards: {cfg.shards} · filter: {cfg.filter}"))
    (out / "dataset.html").write_text(page, encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(m, indent=2, sort_keys=True, default=str) + "\n")
    logger.info("dataset report: %s", out / "dataset.html")
    return out / "dataset.html"
