"""Shared settings and byte mutators of the fuzz tests (issue 14).

Regular run: 60–120 derandomized examples per target (reproducible, ~10 s in all). With RUN_SLOW=1: 10,000 random
examples per target. Every input has a deadline, so a parser that slows down on some input fails the test;
`conftest.py` adds a hard watchdog for a hang in C code. A failure prints the input and a `@reproduce_failure` blob.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings, strategies as st

SLOW = os.environ.get("RUN_SLOW") == "1"
LONG_EXAMPLES = 10_000


def fuzz(examples: int, deadline_ms: int) -> settings:
    """Hypothesis settings: `examples` inputs (10,000 random ones with RUN_SLOW=1), each bounded by `deadline_ms`.

    No example database is written; the regular run is derandomized so that CI sees the same inputs each time.
    """
    return settings(
        max_examples=LONG_EXAMPLES if SLOW else examples,
        deadline=timedelta(milliseconds=deadline_ms),
        derandomize=not SLOW,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                               HealthCheck.large_base_example],
    )


# --- byte and text mutation -----------------------------------------------------------------------------------------

_NASTY_BYTES = (b"\x00", b"\xff", b"\xfe\xff", b"\xef\xbb\xbf", b"\r", b"\r\n", b"<", b">", b'"', b"'", b"&", b"%",
                b"\x1f\x8b", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80" * 3, b"9" * 12)


@st.composite
def mutated_bytes(draw, seeds: list[bytes], max_ops: int = 6) -> bytes:
    """One of `seeds` changed by a few edits: truncate, flip/replace bytes, insert nasty or random bytes, delete a
    range, duplicate a range (a repeated record or chunk)."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(("truncate", "flip", "insert", "nasty", "delete", "duplicate", "set")))
        n = len(data)
        if op == "truncate":
            del data[draw(st.integers(0, n)):]
            continue
        pos = draw(st.integers(0, n))
        if op == "flip" and n:
            pos = min(pos, n - 1)
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            pos = min(pos, n - 1)
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(max_size=16))
        elif op == "nasty":
            data[pos:pos] = draw(st.sampled_from(_NASTY_BYTES))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "duplicate":
            end = min(n, pos + draw(st.integers(1, 256)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


@st.composite
def mutated_text(draw, seeds: list[str], pieces: st.SearchStrategy[str], max_ops: int = 6) -> str:
    """One of `seeds` with a few pieces inserted, a range deleted or duplicated, or the end cut off."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(("insert", "insert", "delete", "duplicate", "truncate")))
        pos = draw(st.integers(0, len(text)))
        if op == "insert":
            text = text[:pos] + draw(pieces) + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 40)):]
        elif op == "duplicate":
            text = text[:pos] + text[pos:pos + draw(st.integers(1, 200))] + text[pos:]
        else:
            text = text[:pos]
    return text


def utf8_clean(*values: str) -> bool:
    """Whether every string encodes as UTF-8 (no lone surrogate), as parquet needs."""
    try:
        for v in values:
            v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
