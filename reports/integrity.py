"""The integrity section: a release rebuilt after some of its domains changed hands (split-view poisoning), per
verification mode: URLs changed, caught, admitted — and, with the demo web's expiry log as ground truth, which
changes were replacements (poisons) and which benign re-encodes. Input: a `rebuild` folder (+ web_expiry.parquet)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc

from mithridate.core import schema
from reports import html as H

MODE_NAMES = {"sha256": "sha256 verified (img2dataset verify_hash)", "none": "no verification",
              "phash": "pHash tolerance"}


def load(folder: str | Path, expiry: str | Path = "") -> tuple[dict, dict | None]:
    """(integrity.json of a `rebuild` folder, `by_kind` against the web's expiry log — None without one)."""
    path = Path(folder) / "integrity.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run `mithridate rebuild` first)")
    report = json.loads(path.read_text())
    kinds = by_kind(folder, expiry, report["modes"]) if expiry and Path(expiry).is_file() else None
    return report, kinds


def by_kind(folder: str | Path, expiry: str | Path, modes) -> dict[str, dict[str, dict]]:
    """mode → expiry kind → {changed, admitted}: the ground truth of what changed, joined with what each mode kept."""
    folder = Path(folder)
    rel = schema.read_folder(folder / "pairs", "pairs", ["uid", "url"])
    exp = schema.read(expiry, "web_expiry", ["url", "kind"]).to_pydict()
    kind_of = dict(zip(exp["url"], exp["kind"]))
    url_of = dict(zip(rel["uid"].to_pylist(), rel["url"].to_pylist()))
    out = {}
    for mode in modes:
        t = schema.read_folder(folder / mode, "shard", ["uid", "status"])
        kept = set(t.filter(pc.equal(t["status"], schema.STATUS_SUCCESS))["uid"].to_pylist())
        counts: dict[str, dict] = {}
        for uid, url in url_of.items():
            kind = kind_of.get(url)
            if kind is None:
                continue
            c = counts.setdefault(kind, {"changed": 0, "admitted": 0})
            c["changed"] += 1
            c["admitted"] += uid in kept
        out[mode] = counts
    return out


def headline(report: dict, kinds: dict | None) -> str:
    parts = []
    for mode, r in report["modes"].items():
        text = (f"{MODE_NAMES.get(mode, mode)}: {r['changed']} of {r['urls']} released URLs served changed content; "
                f"{r['caught']} caught, {r['admitted']} admitted")
        if kinds:
            text += " (" + ", ".join(f"{k}: {v['admitted']} of {v['changed']} admitted"
                                     for k, v in sorted(kinds[mode].items())) + ")"
        parts.append(text + ".")
    return " ".join(parts)


def sections(report: dict, kinds: dict | None) -> list[tuple[str, str]]:
    """(heading, html) sections of the integrity check (`load`'s two results)."""
    rows = [{"mode": MODE_NAMES.get(m, m), **{k: r[k] for k in ("urls", "fetched", "changed", "caught", "admitted",
                                                                 "unchanged_kept", "unchanged_dropped", "failed")}}
            for m, r in report["modes"].items()]
    out = [("Integrity: headline", H.note(headline(report, kinds))),
           ("Integrity: per verification mode", H.table(rows) + H.note(
               "changed = the server now sends bytes whose sha256 differs from the release's; caught = changed and "
               "dropped; admitted = changed and kept (enters the rebuilt dataset); pHash tolerance keeps an image "
               f"within {report['phash_k']} bits of the released pHash."))]
    if kinds:
        rows = [{"mode": MODE_NAMES.get(m, m), "change": k, "URLs changed": v["changed"], "admitted": v["admitted"]}
                for m, ks in kinds.items() for k, v in sorted(ks.items())]
        out.append(("Integrity: replacements vs benign re-encodes", H.note(
            "Ground truth from the demo web: 'expired' = the domain changed hands and serves other pictures "
            "(poisons); 'reencoded' = the same picture re-saved (a benign change).") + H.table(rows)))
    return out


def metrics(report: dict, kinds: dict | None) -> dict:
    out = {f"integrity/{m}/{k}": r[k] for m, r in report["modes"].items()
           for k in ("urls", "changed", "caught", "admitted", "unchanged_kept", "failed")}
    if kinds:
        for m, ks in kinds.items():
            out.update({f"integrity/{m}/{k}_admitted": v["admitted"] for k, v in ks.items()})
            out.update({f"integrity/{m}/{k}_changed": v["changed"] for k, v in ks.items()})
    return out
