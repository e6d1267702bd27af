"""The aesthetic/quality head on real images: the tiny art corpus, clean and degraded, embedded by a small fixed
random filter bank (log-magnitude histograms of random zero-mean 3×3 filters at two scales; no pretrained
weights), written in the embeddings npz contract."""

import dataclasses
import io
import json
import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from PIL import Image
from torch import nn

from curation.acquire import downloader
from curation.score import aesthetic, degrade
from curation.world import art
from mithridate.core import schema, stats_files

SEVERITIES = (0.35, 0.8)


def _filter_bank_embedding(images: list[Image.Image], n_filters: int = 16, bins: int = 8) -> np.ndarray:
    """Per image: for each of `n_filters` random zero-mean 3×3 filters (seed 0) on an opponent-colour image at
    full and half resolution, a histogram of log2 |response|; concatenated and L2-normalised (N × 256)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.from_numpy(np.stack([np.asarray(i.convert("RGB"), np.float32) / 255 for i in images]))
    opponent = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.5, -0.5, 0.0], [0.25, 0.25, -0.5]])
    x = torch.einsum("oc,nhwc->nohw", opponent, x)
    feats = []
    with torch.no_grad():
        for scale in (1, 2):
            xs = x if scale == 1 else nn.functional.avg_pool2d(x, 2)
            w = torch.randn(n_filters, 3, 3, 3, generator=gen)
            r = nn.functional.conv2d(xs, w - w.mean((2, 3), keepdim=True)).abs().flatten(2)
            pos = ((torch.log2(r + 1 / 256) + 8) * (bins - 1) / 8).clamp(0, bins - 1)
            lo = pos.floor().long()
            hi, frac = (lo + 1).clamp(max=bins - 1), pos - lo
            h = torch.zeros(len(images), n_filters, bins).scatter_add_(2, lo, 1 - frac).scatter_add_(2, hi, frac)
            feats.append((h / r.shape[2]).flatten(1))
    f = torch.cat(feats, 1).numpy()
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def _write_embeddings(folder, uids, emb, name, split=2):
    folder.mkdir(parents=True, exist_ok=True)
    for k, idx in enumerate(np.array_split(np.arange(len(uids)), split)):
        np.savez(folder / f"{k:05d}.npz", uid=np.asarray(uids, dtype=str)[idx], img_emb=emb[idx].astype(np.float16),
                 txt_emb=emb[idx].astype(np.float16), encoder=np.array(name))
    (folder / "encoder.json").write_text(json.dumps({"name": name, "model": name, "pretrained": "seed0",
                                                     "dim": int(emb.shape[1])}))
    return folder


@pytest.fixture(scope="module")
def quality(tiny_corpus, tmp_path_factory):
    """Clean and degraded renders of the tiny corpus, embedded; ratings for three quarters of the works."""
    root = tmp_path_factory.mktemp("aesthetic")
    items = art.load(tiny_corpus).sort_values("item_id").to_dict("records")
    rng, images, rows = random.Random(0), [], []
    for it in items:
        im = Image.open(tiny_corpus / it["path64"]).convert("RGB")
        images.append(im)
        rows.append((it["item_id"], None, None))
        for kind in degrade.KINDS:
            for s in SEVERITIES:
                sev = round(s + rng.uniform(-0.15, 0.15), 2)
                images.append(degrade.degrade(im, kind, sev, rng))
                rows.append((it["item_id"], kind, sev))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        emb = _filter_bank_embedding(images)
    finally:
        torch.set_num_threads(old)
    uids = np.array([schema.make_uid(f"render://{i}/{k}/{s}", "") for i, k, s in rows])
    rating = np.array([degrade.quality_rating(k, s) for _, k, s in rows], np.float32)
    works = sorted({r[0] for r in rows})
    random.Random(1).shuffle(works)
    held_out = np.array([r[0] in set(works[: len(works) // 4]) for r in rows])
    emb_dir = _write_embeddings(root / "embed", uids, emb, "filterbank-256")
    pd.DataFrame({"uid": uids[~held_out], "rating": rating[~held_out]}).to_parquet(root / "ratings.parquet")
    kinds = np.array([k or "clean" for _, k, _ in rows])
    return {"root": root, "embed": emb_dir, "ratings": root / "ratings.parquet", "uids": uids, "emb": emb,
            "rating": rating, "held_out": held_out, "kinds": kinds}


def _train_cfg(q, out, **kw):
    return dataclasses.replace(aesthetic.TRAIN_PRESETS["tiny"], embeddings=str(q["embed"]), ratings=str(q["ratings"]),
                               out=str(out), device="cpu", **kw)


@pytest.fixture(scope="module")
def trained(quality):
    return aesthetic.train(_train_cfg(quality, quality["root"] / "head"))


def _spearman(a, b):
    return pd.Series(a).corr(pd.Series(b), method="spearman")


def test_head_learns_quality_and_scores_held_out_works(quality, trained, tmp_path):
    ev = json.loads((trained / "eval.json").read_text())
    assert ev["counts"]["ratings_unknown_uid"] == 0 and ev["n_val"] > 100
    assert ev["val"]["spearman"] > 0.55 and ev["val"]["mse"] < 0.7 * ev["val"]["baseline_mse"], ev["val"]
    out = aesthetic.score(aesthetic.AestheticScoreConfig(embeddings=str(quality["embed"]),
                                                         head_path=str(trained / "head.pt"), out=str(tmp_path)))
    assert sorted(p.name for p in out.glob("*.parquet")) == ["00000.parquet", "00001.parquet"]
    scores = schema.read_folder(out, "aesthetic").to_pandas().set_index("uid")["aesthetic_score"]
    assert scores.notna().all() and len(scores) == len(quality["uids"])
    s = scores.loc[quality["uids"]].to_numpy()
    test = quality["held_out"]
    assert _spearman(s[test], quality["rating"][test]) > 0.65  # measured 0.78 on works never seen in training
    kinds = quality["kinds"]
    for kind in degrade.KINDS:  # every kind of damage lowers the score of the held-out works
        worst = test & (kinds == kind) & (quality["rating"] < 4)
        assert s[worst].mean() < s[test & (kinds == "clean")].mean() - 1, kind
    stats = stats_files.read(out)
    assert stats["rows"] == len(s) and stats["head_kind"] == "mithridate-mlp"


def test_training_is_deterministic_and_records_the_encoder(quality, tmp_path):
    a = aesthetic.train(_train_cfg(quality, tmp_path / "a", epochs=3))
    b = aesthetic.train(_train_cfg(quality, tmp_path / "b", epochs=3))
    ha, hb = (torch.load(p / "head.pt", weights_only=True) for p in (a, b))
    assert all(torch.equal(ha["state_dict"][k], hb["state_dict"][k]) for k in ha["state_dict"])
    assert ha["encoder"]["name"] == "filterbank-256" and ha["input_dim"] == 256


def test_recipe_layout_matches_the_improved_predictor_keys():
    keys = set(aesthetic.build_mlp(768).state_dict())
    assert keys == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}


def _vit_l_sized(quality, tmp_path):
    """The same real embeddings lifted to 768-d by a fixed random projection, as a ViT-L/14-sized folder."""
    proj = np.random.default_rng(0).normal(size=(256, 768)).astype(np.float32)
    emb = quality["emb"] @ proj
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return _write_embeddings(tmp_path / "embed768", quality["uids"], emb, "filterbank-768"), emb.astype(np.float16)


def _score(folder, head, out, **kw):
    cfg = aesthetic.AestheticScoreConfig(embeddings=str(folder), head_path=str(head), out=str(out), device="cpu", **kw)
    out = aesthetic.score(cfg)
    return schema.read_folder(out, "aesthetic").to_pandas().set_index("uid")["aesthetic_score"]


def test_laion_linear_head_loads_and_scores(quality, tmp_path):
    folder, emb = _vit_l_sized(quality, tmp_path)
    torch.manual_seed(0)
    linear = nn.Linear(768, 1)  # what LAION-AI/aesthetic-predictor's sa_0_4_vit_l_14_linear.pth holds
    torch.save(linear.state_dict(), tmp_path / "sa_0_4_vit_l_14_linear.pth")
    scores = _score(folder, tmp_path / "sa_0_4_vit_l_14_linear.pth", tmp_path / "scores")
    x = emb.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    expected = x @ linear.weight.detach().numpy()[0] + linear.bias.item()
    np.testing.assert_allclose(scores.loc[quality["uids"]].to_numpy(), expected, rtol=1e-4, atol=1e-5)
    meta = schema.read(tmp_path / "scores" / "00000.parquet", "aesthetic").schema.metadata
    assert meta[b"head"] == b"sa_0_4_vit_l_14_linear.pth" and meta[b"head_kind"] == b"linear"


@pytest.mark.parametrize("relu", [False, True])
def test_improved_predictor_state_dicts_load(quality, tmp_path, relu):
    folder, emb = _vit_l_sized(quality, tmp_path)
    act = [nn.ReLU()] if relu else []  # linearMSE (ReLUs commented out) and reluMSE layouts of train_predictor.py
    layers = nn.Sequential(nn.Linear(768, 1024), *act, nn.Dropout(0.2), nn.Linear(1024, 128), *act, nn.Dropout(0.2),
                           nn.Linear(128, 64), *act, nn.Dropout(0.1), nn.Linear(64, 16), *act, nn.Linear(16, 1))
    torch.manual_seed(1)
    model = aesthetic.Head(layers).eval()
    torch.save(model.state_dict(), tmp_path / "predictor.pth")
    scores = _score(folder, tmp_path / "predictor.pth", tmp_path / "scores")
    x = torch.from_numpy(emb.astype(np.float32))
    with torch.no_grad():
        expected = model(x / x.norm(dim=1, keepdim=True)).numpy()
    np.testing.assert_allclose(scores.loc[quality["uids"]].to_numpy(), expected, rtol=1e-3, atol=1e-4)


def test_dimension_or_encoder_mismatch_is_a_clear_error(quality, trained, tmp_path):
    torch.save(nn.Linear(768, 1).state_dict(), tmp_path / "laion.pth")
    with pytest.raises(ValueError, match=r"768-d embeddings but .* 256-d embeddings of 'filterbank-256'"):
        _score(quality["embed"], tmp_path / "laion.pth", tmp_path / "s1")
    folder, _ = _vit_l_sized(quality, tmp_path)
    with pytest.raises(ValueError, match=r"256-d embeddings but .* 768-d"):
        _score(folder, trained / "head.pt", tmp_path / "s2")
    other = _write_embeddings(tmp_path / "other", quality["uids"], quality["emb"], "another-encoder-256")
    with pytest.raises(ValueError, match="trained on embeddings of encoder name='filterbank-256'"):
        _score(other, trained / "head.pt", tmp_path / "s3")


def test_unknown_uids_are_counted_and_no_match_is_an_error(quality, tmp_path):
    r = pd.read_parquet(quality["ratings"])
    unknown = pd.DataFrame({"uid": [f"{i:032x}" for i in range(7)], "rating": 5.0})
    pd.concat([r, unknown]).to_csv(tmp_path / "ratings.csv", index=False)
    cfg = dataclasses.replace(_train_cfg(quality, tmp_path / "head", epochs=2), ratings=str(tmp_path / "ratings.csv"))
    ev = json.loads((aesthetic.train(cfg) / "eval.json").read_text())
    assert ev["counts"]["ratings_unknown_uid"] == 7 and ev["counts"]["ratings_matched"] == len(r)
    assert ev["n_train"] + ev["n_val"] == len(r)
    unknown.to_parquet(tmp_path / "none.parquet")
    cfg = dataclasses.replace(cfg, ratings=str(tmp_path / "none.parquet"), out=str(tmp_path / "head2"))
    with pytest.raises(ValueError, match="none of the 7 rated uids has an embedding"):
        aesthetic.train(cfg)


def test_ratings_from_the_demo_web_manifest(tiny_web, tiny_crawl, tmp_path):
    cfg = downloader.DownloadConfig(pairs=str(tiny_crawl / "pairs"), out=str(tmp_path / "shards"), timeout_s=1.0,
                                    threads=16, allow_networks=tiny_web.networks)
    shards = schema.read_folder(downloader.run(cfg), "shard").to_pandas()
    ratings = aesthetic.ratings_from_manifest(tiny_web.manifest, tmp_path / "shards").to_pandas()
    ok = shards[shards["status"] == "success"].set_index("uid")
    m = tiny_web.manifest.to_pandas().drop_duplicates("url").set_index("url")
    assert set(ratings["uid"]) <= set(ok.index) and len(ratings) > 20
    degraded = 0
    for uid, rating in zip(ratings["uid"], ratings["rating"]):
        row = m.loc[ok.loc[uid, "url"]]
        if row["degradation"] is None:
            assert rating == 10.0
        else:
            degraded += 1
            assert rating == pytest.approx(degrade.quality_rating(row["degradation"], float(row["severity"])), abs=1e-3)
    assert degraded >= len(degrade.KINDS)
    assert ratings.columns.tolist() == ["uid", "rating"]

    # the demo's path: embed the downloaded images, train straight from the manifest, score
    images = [Image.open(io.BytesIO(b)) for b in ok["jpg"]]
    emb_dir = _write_embeddings(tmp_path / "embed", ok.index.to_numpy(), _filter_bank_embedding(images), "fb", 1)
    cfg = dataclasses.replace(aesthetic.TRAIN_PRESETS["tiny"], embeddings=str(emb_dir), out=str(tmp_path / "head"),
                              ratings=str(tiny_web.manifest_path), shards=str(tmp_path / "shards"), epochs=5)
    ev = json.loads((aesthetic.train(cfg) / "eval.json").read_text())
    assert ev["ratings_source"] == "web_manifest degradations"
    assert ev["counts"]["ratings_matched"] == len(ratings) and ev["counts"]["ratings_unknown_uid"] == 0
    with pytest.raises(ValueError, match="set shards"):
        aesthetic.train(dataclasses.replace(cfg, shards="", out=str(tmp_path / "head2")))


@pytest.mark.parametrize("field,value", [("hidden", (64, 0)), ("dropout", (0.1,) * 5), ("val_fraction", 1.0),
                                         ("epochs", 0), ("activation", "tanh")])
def test_bad_train_config_is_a_clear_error(field, value):
    with pytest.raises(ValueError, match=field):
        aesthetic.AestheticTrainConfig(**{field: value})


def test_missing_inputs_are_clear_errors(quality, tmp_path):
    with pytest.raises(FileNotFoundError, match="head file not found"):
        _score(quality["embed"], tmp_path / "nope.pt", tmp_path / "s")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a loadable torch state dict"):
        _score(quality["embed"], tmp_path / "junk.pt", tmp_path / "s")
    pa.table({"uid": ["a"], "score": [1.0]}).to_pandas().to_parquet(tmp_path / "r.parquet")
    with pytest.raises(ValueError, match=r"missing columns \['rating'\]"):
        aesthetic.train(dataclasses.replace(_train_cfg(quality, tmp_path / "h"), ratings=str(tmp_path / "r.parquet")))


def test_a_folder_holding_one_encoders_embeddings_resolves_to_it(quality, tmp_path):
    assert aesthetic.embeddings_folder(quality["root"]) == quality["embed"]  # like mithridate-out/embeddings
    _write_embeddings(tmp_path / "a", quality["uids"][:4], quality["emb"][:4], "a", 1)
    _write_embeddings(tmp_path / "b", quality["uids"][:4], quality["emb"][:4], "b", 1)
    with pytest.raises(ValueError, match="several encoders"):
        aesthetic.embeddings_folder(tmp_path)
