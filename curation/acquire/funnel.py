"""The curation funnel: per-shard and per-stage counts of where every row went, and why.

Failure messages from urllib, img2dataset and the guards are grouped into short reasons (`http_404`,
`timeout`, `redirect_loop`, `too_large`, `decode_error`, …) so a funnel can be read at a glance.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pyarrow as pa

from mithridate.core import stats_files

# (pattern in the error message, reason); first match wins
_REASONS = (
    (r"^hash mismatch", "hash_mismatch"),
    (r"^phash mismatch", "phash_mismatch"),
    (r"infinite loop|redirect", "redirect_loop"),
    (r"HTTP Error (\d{3})", "http_{0}"),
    (r"timed out|timeout", "timeout"),
    (r"refused: .* non-public address", "refused_address"),
    (r"exceeds max_bytes", "too_large"),
    (r"response headers exceed|max_headers=|when reading header line", "headers_too_large"),
    (r"exceeds max_pixels|image area too large", "too_many_pixels"),
    (r"wrong content-type", "wrong_content_type"),
    (r"image too small", "too_small"),
    (r"aspect ratio", "bad_aspect_ratio"),
    (r"decod|cannot identify|truncated|Image decoding error", "decode_error"),
    (r"Connection refused|Connection reset|Remote end closed", "connection_error"),
    (r"Name or service|cannot resolve|nodename", "dns_error"),
)


def failure_reason(message: str | None) -> str:
    """A short reason code for an error message ('other' when no rule matches)."""
    if not message:
        return "unknown"
    for pattern, reason in _REASONS:
        m = re.search(pattern, message, re.I)
        if m:
            return reason.format(*m.groups())
    return "other"


def shard_stats(table: pa.Table, seconds: float) -> dict:
    """Counts of one downloaded shard: rows, status, failure reasons, opt-out signals."""
    status = collections.Counter(table["status"].to_pylist())
    reasons, optouts, recorded = collections.Counter(), collections.Counter(), 0
    for st, msg, opt in zip(table["status"].to_pylist(), table["error_message"].to_pylist(),
                            table["optout"].to_pylist()):
        if st in ("failed_to_download", "failed_to_resize"):
            reasons[failure_reason(msg)] += 1
        if st == "opted_out" or opt:  # not fetched, or fetched and recorded (download policy `record`)
            for signal in {s.split("@", 1)[0] for s in (opt or "unknown").split(";")}:  # hosts: see the shard
                optouts[signal] += 1
            recorded += st != "opted_out"
    return {"rows": table.num_rows, "status": dict(status), "failure_reasons": dict(reasons),
            "optout_signals": dict(optouts), "recorded_optouts": recorded, "seconds": round(seconds, 3)}


def folder_stats(folder: Path | str, seconds: float) -> dict:
    """Sum of every shard's stats in a download folder, with images/s over `seconds`."""
    total = {"rows": 0, "status": collections.Counter(), "failure_reasons": collections.Counter(),
             "optout_signals": collections.Counter(), "recorded_optouts": 0, "shards": 0}
    for s in stats_files.read_shards(folder).values():
        total["rows"] += s["rows"]
        total["recorded_optouts"] += s.get("recorded_optouts", 0)
        total["shards"] += 1
        for key in ("status", "failure_reasons", "optout_signals"):
            total[key].update(s[key])
    out = {k: dict(v) if isinstance(v, collections.Counter) else v for k, v in total.items()}
    out["seconds"] = round(seconds, 3)
    out["images_per_s"] = round(out["status"].get("success", 0) / max(seconds, 1e-9), 1)
    return out


def format_funnel(crawl: dict, download: dict) -> str:
    """The funnel as aligned text lines: pages, pairs, opted out by signal, failed by reason, downloaded."""
    lines = [
        f"pages fetched                {crawl.get('pages_fetched', 0):>7}",
        f"pages disallowed (robots)    {crawl.get('pages_disallowed_by_robots', 0):>7}",
    ]
    lines += [f"pages failed: {k[len('pages_failed:'):]:<15}{v:>7}" for k, v in sorted(crawl.items())
              if k.startswith("pages_failed:")]
    st = download.get("status", {})
    lines += [f"pairs found                  {download.get('rows', 0):>7}",
              f"opted out                    {st.get('opted_out', 0):>7}"]
    if download.get("recorded_optouts"):
        lines += [f"opted out, fetched, recorded {download['recorded_optouts']:>7}   (policy record: the filter decides)"]
    lines += [f"  by {k:<25}{v:>7}" for k, v in sorted(download.get("optout_signals", {}).items())]
    failed = st.get("failed_to_download", 0) + st.get("failed_to_resize", 0)
    lines += [f"failed                       {failed:>7}"]
    lines += [f"  {k:<27}{v:>7}" for k, v in sorted(download.get("failure_reasons", {}).items())]
    lines += [f"downloaded                   {st.get('success', 0):>7}"]
    return "\n".join(lines)
