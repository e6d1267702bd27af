import dataclasses
import json
import urllib.request

import pytest

from curation.world import web
from mithridate.core import schema


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, dict(r.headers), r.read()


def _normalised(manifest, w):
    origins = {s.origin: name for name, s in w.servers.items()}
    rows = manifest.to_pylist()
    for r in rows:
        for origin, name in origins.items():
            r["url"] = r["url"].replace(origin, name)
            r["signals"] = [x.replace("@" + origin.split("://")[1], "@" + name) for x in r["signals"]]
            r["page_url"] = r["page_url"].replace(origin, name)
            r["rehost_of"] = r["rehost_of"] and r["rehost_of"].replace(origin, name)
    return rows


def test_manifest_validates_and_plants_every_kind(tiny_web):
    m = schema.read(tiny_web.manifest_path, "web_manifest").to_pandas()
    assert set(m["alt_kind"]) >= {"good", "empty", "missing", "filename", "long", "mismatched", "spam"}
    assert set(m["failure"].dropna()) == set(web.FAILURES)
    assert set(m["markup"]) >= {"img", "img-abs", "srcset", "data-src", "picture", "base-href"}
    signals = {s.split("@")[0] for sig in m["signals"] for s in sig}  # file signals name their host
    assert all(s.split("@")[1] in set(m["url"].str.split("/").str[2]) for sig in m["signals"] for s in sig if "@" in s)
    assert signals >= {"meta:noai", "meta:noimageai", "robots:GPTBot", "robots:CCBot", "x-robots-tag:noai",
                       "tdmrep:header", "tdmrep:well-known", "ai.txt", "robots:mithridate"}
    rehosts = m[m["rehost_of"].notna()]
    assert len(rehosts) > 0 and set(rehosts["site"]) == {"aggregator"}
    assert set(rehosts["rehost_of"]) <= set(m["url"])
    assert m.loc[m["alt_kind"] == "mismatched", "alt_correct"].eq(False).all()
    assert set(m["site"]) == {f"artist-{a}" for a in tiny_web.artists} | {"aggregator", "linkfarm"}


def test_same_seed_same_web_other_seed_other_web(tiny_web, tmp_path):
    base = dataclasses.replace(tiny_web.cfg, out=str(tmp_path / "a"))
    with web.DemoWeb(base) as again:
        same = _normalised(again.manifest, again)
    with web.DemoWeb(dataclasses.replace(base, seed=1, out=str(tmp_path / "b"))) as other:
        different = _normalised(other.manifest, other)
    assert same == _normalised(tiny_web.manifest, tiny_web)
    assert different != same


def test_sites_serve_their_optout_signals(tiny_web):
    names = {i % 3: f"artist-{a}" for i, a in enumerate(tiny_web.artists)}
    noai, reserved = tiny_web.servers[names[1]], tiny_web.servers[names[2]]
    assert b"GPTBot" in _get(noai.origin + "/robots.txt")[2]
    _, headers, body = _get(noai.origin + "/gallery/1.html")
    assert b'content="noai, noimageai"' in body
    img = next(p for p in noai.routes if p.startswith("/img/"))
    assert _get(noai.origin + img)[1]["X-Robots-Tag"] == "noai, noimageai"
    _, headers, _ = _get(reserved.origin + "/gallery/1.html")
    assert headers["tdm-reservation"] == "1"
    assert json.loads(_get(reserved.origin + "/.well-known/tdmrep.json")[2])[0]["tdm-reservation"] == 1
    assert b"Disallow: *.png" in _get(reserved.origin + "/ai.txt")[2]
    assert b"User-agent: mithridate\nDisallow: /private/" in _get(reserved.origin + "/robots.txt")[2]


def test_failure_routes_behave(tiny_web):
    farm = tiny_web.servers["linkfarm"]
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(farm.origin + "/media/gone-0.png")
    assert err.value.code == 404
    assert _get(farm.origin + "/latin1.html")[1]["Content-Type"].endswith("windows-1252")


@pytest.mark.parametrize("field,value", [("first_host", "10.0.0.1"), ("first_host", "nope"),
                                         ("images_per_page", 0), ("rehost_fraction", 1.5),
                                         ("degraded_fraction", -0.1), ("ports", (80, 70000))])
def test_bad_config_is_a_clear_error(field, value):
    with pytest.raises(ValueError, match=field):
        web.WebConfig(**{field: value})


def test_aggregator_serves_degraded_copies_of_every_kind(tiny_web):
    import io

    import numpy as np
    from PIL import Image

    from curation.score import degrade
    from curation.world import webcontent as wc

    m = tiny_web.manifest.to_pandas()
    agg = m[m["site"] == "aggregator"]
    degraded = agg[agg["degradation"].notna()]
    assert set(degraded["degradation"]) == set(degrade.KINDS)
    assert degraded["severity"].between(0.1, 1.0).all() and agg.loc[agg["degradation"].isna(), "severity"].isna().all()
    assert m.loc[m["site"] != "aggregator", "degradation"].isna().all()
    corpus = tiny_web.corpus
    items = {i["item_id"]: i for i in tiny_web.items}

    def served_vs_clean(row):
        served = _get(row.url)[2]
        clean = Image.open(corpus / items[row.item_id]["path64"])
        px = np.asarray(Image.open(io.BytesIO(served)).convert("RGB"), dtype=float)
        return served, wc.jpeg_bytes(clean), np.abs(px - np.asarray(clean.convert("RGB"), dtype=float)).mean()

    clean_err = max(served_vs_clean(r)[2] for r in agg[agg["degradation"].isna()].itertuples())
    for row in degraded.itertuples():
        served, clean_jpeg, err = served_vs_clean(row)
        assert served != clean_jpeg, row.degradation
        assert err > clean_err, (row.degradation, row.severity, err, clean_err)
    for row in agg[agg["degradation"].isna()].itertuples():  # clean copies are the plain re-encode
        assert served_vs_clean(row)[0] == served_vs_clean(row)[1]


def test_degraded_fraction_zero_serves_only_clean_copies(tiny_web, tmp_path):
    cfg = dataclasses.replace(tiny_web.cfg, out=str(tmp_path), degraded_fraction=0.0)
    with web.DemoWeb(cfg) as w:
        assert w.manifest["degradation"].null_count == len(w.manifest)
