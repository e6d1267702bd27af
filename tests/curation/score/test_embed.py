"""`embed` on real shards downloaded from the tiny demo web, with a tiny compact checkpoint built in code."""

import dataclasses
import io
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curation.score import clip_train, embed, encoders
from mithridate.core import schema, stats_files

TINY = dataclasses.replace(clip_train.PRESETS["tiny"], embed_dim=32, vision_width=8, vision_head_width=8,
                           text_width=32, text_layers=1, text_heads=2, context_length=16)


@pytest.fixture(scope="module")
def shards(tiny_shards):
    return tiny_shards


@pytest.fixture(scope="module")
def checkpoint(tiny_clip_checkpoint):
    return tiny_clip_checkpoint


@pytest.fixture(scope="module")
def embedded(shards, checkpoint):
    cfg = embed.EmbedConfig(shards=str(shards), pretrained=str(checkpoint), batch_size=8, device="cpu")
    return cfg, embed.run(cfg)


def test_default_out_is_named_after_the_encoder(embedded, checkpoint, shards):
    _, out = embedded
    name = encoders.load_encoder("compact", str(checkpoint)).name
    assert out == shards.parent / "embeddings" / name
    assert json.loads((out / "encoder.json").read_text()) == {"name": name, "model": "compact",
                                                              "pretrained": str(checkpoint), "dim": TINY.embed_dim}


def test_npz_contract_rows_are_the_success_rows_in_shard_order(embedded, shards):
    _, out = embedded
    files = embed.shard_files(shards)
    assert len(files) >= 3
    for f in files:
        with np.load(out / f"{f.stem}.npz") as z:
            assert set(z.files) == {"uid", "img_emb", "txt_emb", "encoder"}
            assert z["img_emb"].dtype == z["txt_emb"].dtype == np.float16
            assert z["img_emb"].shape == z["txt_emb"].shape == (len(z["uid"]), TINY.embed_dim)
            assert z["uid"].tolist() == embed.success_uids(f)
            assert str(z["encoder"]) == json.loads((out / "encoder.json").read_text())["name"]
            for key in ("img_emb", "txt_emb"):
                if len(z["uid"]):
                    np.testing.assert_allclose(np.linalg.norm(z[key].astype(np.float32), axis=1), 1.0, atol=2e-3)
    stats = stats_files.read(out)
    assert stats["embedded"] == sum(len(embed.success_uids(f)) for f in files) > 20 and stats["failed"] == 0


def test_embeddings_match_the_encoder_on_the_decoded_rows(embedded, shards, checkpoint):
    _, out = embedded
    data = embed.load_embeddings(out, 0)
    t = schema.read(shards / "00000.parquet", "shard").to_pandas()
    ok = t[t["status"] == "success"]
    enc = encoders.load_encoder("compact", str(checkpoint), device="cpu")
    img = enc.encode_images([Image.open(io.BytesIO(b)) for b in ok["jpg"]])
    np.testing.assert_allclose(data["img_emb"].astype(np.float32), img, atol=2e-3)
    np.testing.assert_allclose(data["txt_emb"].astype(np.float32), enc.encode_texts(list(ok["caption"])), atol=2e-3)


def test_rerun_skips_finished_shards_and_redoes_a_missing_one(embedded):
    cfg, out = embedded
    npz = sorted(out.glob("*.npz"))
    before = {p.name: os.stat(p).st_mtime_ns for p in npz}
    stats_files.path(out, "00001").unlink()  # as if the run died before finishing shard 1
    embed.run(cfg)
    after = {p.name: os.stat(p).st_mtime_ns for p in sorted(out.glob("*.npz"))}
    assert {k for k in after if after[k] != before[k]} == {"00001.npz"}


def test_misaligned_npz_is_a_clear_error_naming_the_shard(embedded, tmp_path):
    _, out = embedded
    copy = tmp_path / "emb"
    shutil.copytree(out, copy)
    with np.load(copy / "00002.npz") as z:
        data = {k: z[k] for k in z.files}
    with open(copy / "00002.npz", "wb") as fh:
        np.savez(fh, **{k: (v[::-1] if v.ndim else v) for k, v in data.items()})  # rows reversed
    with pytest.raises(ValueError, match="00002.parquet"):
        embed.load_embeddings(copy, 2)
    with pytest.raises(FileNotFoundError, match="00099"):
        embed.load_embeddings(copy, 99)


def test_undecodable_success_rows_are_listed_not_silent(shards, checkpoint, tmp_path, caplog):
    broken = tmp_path / "shards"
    table = schema.read(shards / "00000.parquet", "shard")
    t = table.to_pandas()
    bad = t.index[t["status"] == "success"][1]
    jpg = table["jpg"].to_pylist()
    jpg[bad] = jpg[bad][:40]  # a truncated JPEG on a success row
    table = table.set_column(table.schema.get_field_index("jpg"), "jpg", pa.array(jpg, pa.binary()))
    schema.write(table, broken / "00000.parquet", "shard")
    cfg = embed.EmbedConfig(shards=str(broken), pretrained=str(checkpoint), device="cpu")
    with caplog.at_level(logging.WARNING, logger="curation.score.embed"):
        out = embed.run(cfg)
    stats = stats_files.read(out, "00000")
    assert [f["uid"] for f in stats["failed"]] == [t.at[bad, "uid"]] and stats["failed"][0]["error"]
    assert "undecodable" in caplog.text
    data = embed.load_embeddings(out, 0)  # aligned with the shard minus the recorded failure
    assert t.at[bad, "uid"] not in data["uid"] and len(data["uid"]) == stats["success"] - 1
    assert stats_files.read(out)["failed"] == 1


def test_a_retrained_checkpoint_at_the_same_path_is_refused(shards, tmp_path):
    ckpt = tmp_path / "clip.pt"
    clip_train.save_checkpoint(clip_train.build_model(TINY), TINY, ckpt)
    cfg = embed.EmbedConfig(shards=str(shards), out=str(tmp_path / "emb"), pretrained=str(ckpt), device="cpu")
    embed.run(cfg)
    clip_train.save_checkpoint(clip_train.build_model(dataclasses.replace(TINY, seed=1)), TINY, ckpt)
    with pytest.raises(ValueError, match="holds embeddings of encoder"):
        embed.run(cfg)
    ckpt.rename(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="another config"):
        embed.run(dataclasses.replace(cfg, pretrained=str(tmp_path / "other.pt")))


def test_missing_shards_is_file_not_found(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="shards"):
        embed.run(embed.EmbedConfig(shards=str(tmp_path), pretrained=str(checkpoint)))


def test_web_auc_from_images_or_from_embeddings_agree(embedded, shards, checkpoint, tiny_web):
    _, out = embedded
    enc = encoders.load_encoder("compact", str(checkpoint), device="cpu")
    direct = clip_train.evaluate_on_web(enc, shards, tiny_web.manifest_path)
    cached = clip_train.evaluate_on_web(enc, shards, tiny_web.manifest, embeddings=out)
    assert direct["positives"] > 0 and direct["negatives"] > 0 and 0 <= direct["auc"] <= 1
    assert (direct["positives"], direct["negatives"]) == (cached["positives"], cached["negatives"])
    assert abs(direct["auc"] - cached["auc"]) < 0.05


def test_clip_retrieval_layout_lines_up_with_the_npz_and_the_shards(embedded, shards, tmp_path):
    import pyarrow.parquet as pq

    cfg, _ = embedded
    out = embed.run(dataclasses.replace(cfg, layout="clip-retrieval"))  # a rerun that only adds the layout
    cr = out / "clip-retrieval"
    npzs = sorted(out.glob("[0-9][0-9][0-9][0-9][0-9].npz"))
    assert len(list((cr / "img_emb").glob("*.npy"))) == len(npzs) > 0
    for k, npz in enumerate(npzs):
        data = embed.load_embeddings(out, npz.stem)
        img, txt = np.load(cr / "img_emb" / f"img_emb_{k}.npy"), np.load(cr / "text_emb" / f"text_emb_{k}.npy")
        meta = pq.read_table(cr / "metadata" / f"metadata_{k}.parquet").to_pandas()
        assert img.dtype == np.float16 and np.array_equal(img, data["img_emb"])
        assert np.array_equal(txt, data["txt_emb"])
        assert meta["uid"].tolist() == data["uid"].tolist() and list(meta.columns) == ["uid", "url", "caption"]
        rows = pq.read_table(Path(shards) / f"{npz.stem}.parquet").to_pandas().set_index("uid")
        assert meta["caption"].tolist() == rows.loc[meta["uid"], "caption"].tolist()
