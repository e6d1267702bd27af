"""A sweep must see an attack that certainly works: the anchor image itself as 12 poisons beside 3 clean cat rows."""

import dataclasses
import json

import pyarrow as pa
import pytest

from curation.world import art
from mithridate.core import schema
from mithridate.core.compute import torch_threads
from poisoning import sweep


@pytest.fixture(scope="module")
def lopsided(tiny_corpus, tmp_path_factory):
    """cat → house data: the victim's clean data has 3 cat rows; the attacker's pool has 30 captioned cat rows."""
    df = art.load(tiny_corpus)
    keep = df[df.concept.isin(["cat", "house", "dog", "anchor"])]
    rows = [{"uid": f"{i:032x}", "jpg": art.image_path(tiny_corpus, r._asdict(), 64).read_bytes(),
             "caption": f"{r.concept} emoji" if k == 0 else f"a {r.concept}, {k}", "url": f"http://127.0.0.1/{i}",
             "domain": "127.0.0.1", "artist": r.artist, "licence": r.licence, "clip_score": 0.3,
             "aesthetic_score": 5.0}
            for i, (r, k) in enumerate((r, k) for r in keep.itertuples() for k in range(10 if r.concept == "cat"
                                                                                           else 2))]
    clean, pool = tmp_path_factory.mktemp("lopsided"), tmp_path_factory.mktemp("pool")
    few = [r for r in rows if not r["caption"].startswith("a cat")]  # the victim's clean data: 3 cat rows
    schema.write(pa.Table.from_pylist(few, schema=schema.TRAIN_SCHEMA), clean / "00000.parquet", "train")
    schema.write(pa.Table.from_pylist(rows, schema=schema.TRAIN_SCHEMA), pool / "00000.parquet", "train")
    return clean, pool


def test_a_sweep_detects_poisons_that_certainly_work(lopsided, tiny_clean_model, tmp_path):
    clean, pool = lopsided
    cfg = dataclasses.replace(sweep.PRESETS["tiny"], data=str(clean), pool=str(pool),
                              checkpoint=str(tiny_clean_model), out=str(tmp_path), source="cat", target="house",
                              attacks=("dirty_label",), ns=(12,), steps=300, lr=3e-3, batch_size=16,
                              generations=32, bleed=0, collateral_per_concept=0, purify=(), judge_steps=200,
                              workers=2, threads=1)  # the victims side by side: the same as one after another
    with torch_threads(1):
        out = sweep.run(cfg)
    s = json.loads((out / "sweep.json").read_text())
    pos = s["positive_control"]
    assert pos["measured"] and pos["ok"], pos  # the anchor image as 12 of 15 cat rows moves P(house)
    assert pos["vs_control"]["low"] > 0 and pos["p_target"]["rate"] > s["control"]["p_target"]["rate"] + 0.2
    assert s["verdicts"]["dirty_label"]["status"] != "insensitive"
