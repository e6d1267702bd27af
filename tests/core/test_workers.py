"""Side-by-side trainings: the worker count, and clear errors for the two fields."""

import pytest

from mithridate.core import workers
from poisoning import sweep
from poisoning.audit import artist_removal


def test_resolve_caps_at_the_jobs_and_reads_zero_as_the_cores(monkeypatch):
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 6)
    assert workers.resolve(0, 10) == 6 and workers.resolve(0, 3) == 3
    assert workers.resolve(4, 2) == 2 and workers.resolve(1, 9) == 1


def test_run_in_process_keeps_job_order():
    assert workers.run(pow, [(2, 3), (3, 2), (5, 0)], workers=1, threads=1) == [8, 9, 1]
    assert workers.run(pow, [], workers=2, threads=1) == []


@pytest.mark.parametrize("cls", [sweep.SweepConfig, artist_removal.OptoutConfig])
def test_side_by_side_needs_a_fixed_thread_count(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.workers=2: side-by-side trainings need threads >= 1"):
        cls(workers=2)
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.threads=-1: must be >= 0"):
        cls(threads=-1)
    assert cls(workers=2, threads=1).workers == 2
