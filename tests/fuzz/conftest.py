"""Fuzz tests: a hard watchdog per test, for a hang inside C code (lexbor, zlib, libpng…) that no deadline sees."""

import faulthandler
import sys

import pytest
from _fuzz import SLOW


@pytest.fixture(autouse=True)
def hang_watchdog():
    """Dump every thread's stack and exit if one fuzz test runs far past its budget (a hang, not a slow input)."""
    faulthandler.dump_traceback_later(3000 if SLOW else 300, exit=True, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()
