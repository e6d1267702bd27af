"""Parsers for opt-out signals in pages and headers: X-Robots-Tag, <meta> robots, TDMRep. Pure functions.

A signal is a short string recorded on a pair (e.g. `meta:noai`, `tdmrep:header`, `x-robots-tag:noai`; the
per-host files robots.txt, ai.txt and tdmrep.json give `robots:GPTBot@host`, `ai.txt@host`, … through
`curation.acquire.robots`). These functions say which signals apply; the download policy decides what to do with them.
"""

from __future__ import annotations

import fnmatch
import json
from urllib.parse import urlsplit

# directives that express "do not use for AI training" (img2dataset's defaults are the first four)
AI_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
# crawlers of AI companies whose exclusion in robots.txt signals an opt-out from training
AI_AGENTS = ("GPTBot", "CCBot", "Google-Extended", "anthropic-ai", "ClaudeBot", "img2dataset")


# directives that carry a value after a colon (so their name is not a user-agent scope)
_VALUED = ("unavailable_after", "max-snippet", "max-image-preview", "max-video-preview")


def x_robots_directives(values: list[str], ua_token: str) -> set[str]:
    """Directives in X-Robots-Tag header values that apply to `ua_token` (unscoped ones apply to all).

    `X-Robots-Tag: otherbot: noai` does not apply to us; `X-Robots-Tag: noai, noimageai` does.
    """
    out = set()
    for value in values:
        scope, _, rest = value.partition(":")
        if rest and " " not in scope.strip() and "," not in scope and scope.strip().lower() not in _VALUED:
            if scope.strip().lower() != ua_token.lower():
                continue
            value = rest
        out.update(d.strip().lower() for d in value.split(",") if d.strip())
    return out


def directive_signals(directives: set[str], prefix: str) -> list[str]:
    """Signals (`<prefix>:<directive>`) for the AI-relevant directives among `directives`."""
    return sorted(f"{prefix}:{d}" for d in directives if d in AI_DIRECTIVES)


def tdmrep_reserved(policies: list[dict], url: str) -> bool:
    """True when a `/.well-known/tdmrep.json` rule whose `location` matches `url`'s path reserves TDM rights."""
    path = urlsplit(url).path or "/"
    for rule in policies:
        loc = str(rule.get("location", "")).replace("[", "[[]")  # "[" literal: fnmatch's classes are quadratic
        if loc and fnmatch.fnmatchcase(path, loc if loc.startswith("/") else "/" + loc):
            return str(rule.get("tdm-reservation", "0")) == "1"
    return False


def parse_tdmrep(text: str) -> list[dict]:
    """Rules of a tdmrep.json file (a JSON list of objects); anything else yields no rules."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, ValueError, RecursionError):  # RecursionError: "[[[[…" nested too deep
        return []
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []


def page_signals(robots: set[str], tdm_meta: bool, headers: list[tuple[str, str]],
                 ua_token: str) -> list[str]:
    """Opt-out signals of a page, sorted: robots meta, TDMRep meta/header and X-Robots-Tag directives.

    Args:
        robots: lower-cased directives of the page's robots meta elements.
        tdm_meta: whether the page has `<meta name="tdm-reservation" content="1">`.
        headers: the page's HTTP response headers.
        ua_token: our user-agent token; X-Robots-Tag values scoped to other agents are ignored.
    """
    signals = set(directive_signals(robots, "meta"))
    if tdm_meta:
        signals.add("tdmrep:meta")
    if any(k.lower() == "tdm-reservation" and str(v).strip() == "1" for k, v in headers):
        signals.add("tdmrep:header")
    tags = [str(v) for k, v in headers if k.lower() == "x-robots-tag"]
    signals.update(directive_signals(x_robots_directives(tags, ua_token), "x-robots-tag"))
    return sorted(signals)
