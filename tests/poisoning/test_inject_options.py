"""`poison inject` options on the tiny model: the benign control, an art-corpus pool, the transfer setting, a
generated anchor, determinism, the SSIM budget and bad values. One torch thread."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from diffusion import data, training, vae_train as vae
from mithridate.core import schema
from poisoning import inject, pool, quality

N_STEPS = 4  # nightshade steps: enough to move pixels, cheap on one thread


@pytest.fixture(scope="module")
def vae_dir(tiny_train, tmp_path_factory):
    cfg = dataclasses.replace(vae.PRESETS["tiny"], data=str(tiny_train), out=str(tmp_path_factory.mktemp("v")))
    return vae.run(cfg)


@pytest.fixture(scope="module")
def other_vae_dir(tiny_train, tmp_path_factory):
    """The same tiny autoencoder recipe, another seed (shorter: only its weights need to differ)."""
    return vae.run(dataclasses.replace(vae.PRESETS["tiny"], data=str(tiny_train), seed=1, steps=20,
                                       out=str(tmp_path_factory.mktemp("v2"))))


@pytest.fixture(scope="module")
def clean_model(tiny_train, tiny_clip_checkpoint, vae_dir, tmp_path_factory):
    cfg = dataclasses.replace(training.PRESETS["tiny"], data=str(tiny_train), vae=str(vae_dir),
                              clip=str(tiny_clip_checkpoint), out=str(tmp_path_factory.mktemp("m")),
                              concepts=("cat", "house", "anchor"), steps=5)
    return training.run(cfg)


@pytest.fixture(scope="module")
def cats_only(tiny_train, tmp_path_factory):
    """A pool of training shards holding only the cat rows of `tiny_train` (no image of house or anchor)."""
    table = pa.concat_tables([schema.read(f, "train") for f in data.shard_files(tiny_train)])
    keep = np.flatnonzero(data.match_concepts(table.column("caption").to_pylist(), ["cat"]) == 0)
    out = tmp_path_factory.mktemp("cats")
    schema.write(table.take(keep), out / "00000.parquet", "train")
    return out


def _cfg(tiny_train, clean_model, out, **kw):
    kw = {"source": "cat", "target": "house", "steps": N_STEPS, **kw}
    return dataclasses.replace(inject.PRESETS["tiny"], data=str(tiny_train), checkpoint=str(clean_model), out=str(out),
                               **kw)


def _poison_rows(out):
    """(decoded 32 px uint8 pixels, captions, raw image bytes) of the poison shard."""
    rows = data.load_shard(out / inject.POISON_SHARD, 32)
    raw = schema.read(out / inject.POISON_SHARD, "train").column("jpg").to_pylist()
    return data.to_uint8(rows.images), rows.captions, raw


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


def test_benign_writes_the_candidates_unchanged(tiny_train, clean_model, tmp_path):
    out = inject.run(_cfg(tiny_train, clean_model, tmp_path, attack="benign", n=3))
    clean = data.load_images(tiny_train, 32)
    by_uid = {u: i for i, u in enumerate(clean.uids)}
    meta = pd.read_parquet(out / "poisons.parquet")
    pixels, captions, _ = _poison_rows(out)
    assert len(meta) == len(pixels) == 3 and set(meta.attack) == {"benign"}
    assert meta.original_uid.nunique() == 3
    originals = data.to_uint8(clean.images[[by_uid[u] for u in meta.original_uid]])
    assert np.abs(pixels.astype(int) - originals).max() <= 1  # PNG is lossless; 1 level for rounding at most
    assert captions == [clean.captions[by_uid[u]] for u in meta.original_uid] == list(meta.caption)
    assert all(data.match_concepts(captions, ["cat"]) == 0)
    assert _manifest(out)["attack"] == "benign" and set(meta.setting) == {"white_box"}
    assert len(data.load_images(out, 32)) == len(clean) + 3


def test_corpus_pool_supplies_the_candidates(tiny_train, tiny_corpus, clean_model, tmp_path):
    out = inject.run(_cfg(tiny_train, clean_model, tmp_path / "benign", attack="benign", n=2, pool=str(tiny_corpus)))
    meta = pd.read_parquet(out / "poisons.parquet")
    assert len(meta) == 2 and all(u.startswith("art-") for u in meta.original_uid)
    corpus = pool.load(tiny_corpus, 32)
    by_uid = {u: i for i, u in enumerate(corpus.uids)}
    pixels, captions, _ = _poison_rows(out)
    assert captions == [corpus.captions[by_uid[u]] for u in meta.original_uid]
    assert all(c.startswith("cat emoji by ") for c in captions)
    assert np.abs(pixels.astype(int) - data.to_uint8(corpus.images[[by_uid[u] for u in meta.original_uid]])).max() <= 1
    m = _manifest(out)
    assert m["pool"] == str(tiny_corpus) and m["pool_candidates"] == 3 and m["clean_rows"] == 72

    out = inject.run(_cfg(tiny_train, clean_model, tmp_path / "dirty", attack="dirty_label", n=2,
                          pool=str(tiny_corpus)))
    meta = pd.read_parquet(out / "poisons.parquet")
    assert all(u.startswith("art-") for u in meta.original_uid)  # the house images come from the corpus too
    assert all(corpus.captions[by_uid[u]].startswith("house emoji by ") for u in meta.original_uid)


def test_transfer_vae_is_recorded(tiny_train, clean_model, other_vae_dir, tmp_path):
    out = inject.run(_cfg(tiny_train, clean_model, tmp_path, attack="nightshade", n=2, vae=str(other_vae_dir)))
    assert _manifest(out)["setting"] == "transfer"
    meta = pd.read_parquet(out / "poisons.parquet")
    assert list(meta.setting) == ["transfer", "transfer"]
    # the gap is also measured under the victim's encoder, where it differs from the attacked one's
    assert meta.gap_closed_victim.notna().all() and (meta.gap_closed_victim != meta.gap_closed).all()


def test_same_vae_is_white_box(tiny_train, clean_model, vae_dir, tmp_path):
    out = inject.run(_cfg(tiny_train, clean_model, tmp_path, attack="nightshade", n=2, vae=str(vae_dir)))
    assert _manifest(out)["setting"] == "white_box"
    assert set(pd.read_parquet(out / "poisons.parquet").setting) == {"white_box"}
    assert "gap_closed_victim" not in pd.read_parquet(out / "poisons.parquet")


def test_generated_anchor_needs_no_target_image(tiny_train, clean_model, cats_only, tmp_path):
    with pytest.raises(ValueError, match="target='house': no pool image"):
        inject.run(_cfg(tiny_train, clean_model, tmp_path / "data", attack="nightshade", n=2, pool=str(cats_only)))
    out = inject.run(_cfg(tiny_train, clean_model, tmp_path / "gen", attack="nightshade", n=2, pool=str(cats_only),
                          anchor="generated", eps=8 / 255))
    meta = pd.read_parquet(out / "poisons.parquet")
    assert len(meta) == 2 and _manifest(out)["anchor"] == "generated" and _manifest(out)["pool_target_images"] == 0
    pixels, captions, _ = _poison_rows(out)
    by_uid = {u: i for i, u in enumerate(pool.load(cats_only, 32).uids)}
    originals = data.to_uint8(pool.load(cats_only, 32).images[[by_uid[u] for u in meta.original_uid]])
    delta = np.abs(pixels.astype(int) - originals).max(axis=(1, 2, 3))
    assert (delta > 0).all() and (delta <= 8 + 1).all()  # perturbed, within the L∞ budget up to rounding
    assert (meta.latent_dist_after < meta.latent_dist_before).all()  # moved toward the generated anchor


def test_same_seed_same_poisons(tiny_train, clean_model, tmp_path):
    runs = [inject.run(_cfg(tiny_train, clean_model, tmp_path / name, attack="nightshade", n=2, seed=seed))
            for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    (pa_, ca, ra), (pb, cb, rb), (pc, cc, _) = map(_poison_rows, runs)
    assert np.array_equal(pa_, pb) and ca == cb and ra == rb
    ma, mb = (pd.read_parquet(r / "poisons.parquet") for r in runs[:2])
    pd.testing.assert_frame_equal(ma, mb)
    assert pc.shape == pa_.shape and len(cc) == 2  # another seed: a valid run (it may pick other candidates)


def test_ssim_budget_keeps_the_floor(tiny_train, clean_model, tmp_path):
    floor = 0.95
    out = inject.run(_cfg(tiny_train, clean_model, tmp_path, attack="nightshade", n=2, budget="ssim",
                          ssim_floor=floor, steps=15))
    meta = pd.read_parquet(out / "poisons.parquet")
    assert (meta.budget == "ssim").all() and (meta.ssim >= floor - 1e-3).all()
    clean = data.load_images(tiny_train, 32)
    by_uid = {u: i for i, u in enumerate(clean.uids)}
    pixels, _, _ = _poison_rows(out)
    originals = clean.images[[by_uid[u] for u in meta.original_uid]]
    stored = quality.ssim(originals, data.from_uint8(pixels)).numpy()  # the PNG pixels, not the float iterate
    assert (stored >= floor - 1e-3).all()
    assert (meta.ssim < 1).any() and (meta.gap_closed > 0).any()  # the floor did not just keep the originals


@pytest.mark.parametrize("field, value", [("ssim_floor", 1.5), ("budget", "lpips2"), ("anchor", "x"), ("n", 0),
                                          ("attack", "clean"), ("steps", 0)])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"InjectConfig\.{field}={value!r}"):
        dataclasses.replace(inject.PRESETS["tiny"], **{field: value})


def test_lpips_budget_with_user_supplied_backbone(tiny_train, clean_model, tmp_path):
    """The paper's LPIPS budget, its AlexNet trunk loaded from a local state dict (random weights here: the
    plumbing and the limit are under test, not the perceptual calibration)."""
    import torch
    import torchvision

    backbone = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), backbone)
    out = inject.run(_cfg(tiny_train, clean_model, tmp_path / "o", attack="nightshade", n=2, budget="lpips",
                          lpips_limit=0.01, lpips_backbone=str(backbone)))
    meta = pd.read_parquet(out / "poisons.parquet")
    assert set(meta.budget) == {"lpips"} and (meta.lpips <= 0.01 + 1e-6).all()
    assert (meta.linf > 0).any()  # the optimiser moved at least one image within the limit


def test_lpips_budget_needs_backbone_weights(tiny_train, clean_model, tmp_path):
    with pytest.raises(ValueError, match="lpips_backbone"):
        _cfg(tiny_train, clean_model, tmp_path, budget="lpips")
    with pytest.raises(ValueError, match="lpips_backbone=.*not found"):
        inject.run(_cfg(tiny_train, clean_model, tmp_path / "o", attack="nightshade", n=2, budget="lpips",
                        lpips_backbone=str(tmp_path / "missing.pth")))
    (tmp_path / "bad.pth").write_bytes(b"not torch")
    with pytest.raises(ValueError, match="not a readable torch file"):
        inject.run(_cfg(tiny_train, clean_model, tmp_path / "p", attack="nightshade", n=2, budget="lpips",
                        lpips_backbone=str(tmp_path / "bad.pth")))
