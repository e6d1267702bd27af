"""Compact CLIP training on the tiny art corpus: learning, metrics, checkpoint round trip, resume, clear errors."""

import dataclasses
import json
import os
import sys

import numpy as np
import open_clip
import pytest
import torch

from curation.score import clip_train, encoders
from mithridate.core import checkpoints, commands
from mithridate.core.lr import warmup_cosine

# the tiny preset, narrowed further so that this file stays within seconds
FAST = dataclasses.replace(clip_train.PRESETS["tiny"], embed_dim=32, vision_width=8, vision_head_width=8,
                           text_width=32, text_layers=1, text_heads=2, context_length=16, steps=30, minutes=0,
                           warmup_steps=3, lr=3e-3)


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    cfg = dataclasses.replace(FAST, art_dir=str(tiny_corpus), out=str(tmp_path_factory.mktemp("clip")))
    out = clip_train.run(cfg)
    return cfg, out, json.loads((out / "eval.json").read_text())


@pytest.fixture(scope="module")
def corpus(tiny_corpus):
    return clip_train.load_corpus(tiny_corpus, 32)


def test_run_writes_checkpoint_metrics_config_and_curve(trained):
    cfg, out, metrics = trained
    assert {p.name for p in out.iterdir()} >= {"clip.pt", "eval.json", "config.json", "curve.png", "curve.csv"}
    assert metrics["train/steps"] == cfg.steps and metrics["train/stopped_by"] == "steps"
    for prefix in ("heldout_style", "unseen"):
        for key in ("zeroshot_top1", "zeroshot_top5", "zeroshot_all_top1", "zeroshot_all_top5", "i2t_r1", "i2t_r5",
                    "t2i_r1", "t2i_r5", "auc_mismatched", "auc_spam"):
            assert 0.0 <= metrics[f"{prefix}/{key}"] <= 1.0, (prefix, key)
        assert metrics[f"{prefix}/items"] > 0
    assert metrics["name"].startswith("compact-clip-")


def test_loss_decreases(trained):
    _, _, metrics = trained
    assert metrics["train/loss_last"] < 0.8 * metrics["train/loss_first"]


def test_checkpoint_reloads_with_identical_embeddings(corpus, tmp_path):
    cfg = dataclasses.replace(FAST, steps=3)
    split = clip_train.make_split(corpus, cfg, np.random.default_rng(0))
    captions = clip_train.build_captions(corpus, cfg, encoders.compact_tokenizer(cfg.context_length))
    model = clip_train.build_model(cfg)
    clip_train.train(model, corpus, captions, split, cfg, "cpu")
    name = clip_train.save_checkpoint(model, cfg, tmp_path / "clip.pt")
    live = encoders.Encoder(model, encoders.compact_transform(clip_train.preprocess_info(32)),
                            encoders.compact_tokenizer(cfg.context_length), name, "cpu")
    loaded = encoders.load_encoder("compact", str(tmp_path / "clip.pt"), device="cpu")
    images = [np.asarray(corpus.pixels[i].permute(1, 2, 0).mul(255).byte()) for i in range(4)]
    assert loaded.name == name
    np.testing.assert_array_equal(loaded.encode_images(images), live.encode_images(images))
    np.testing.assert_array_equal(loaded.encode_texts(["a cow", "dog"]), live.encode_texts(["a cow", "dog"]))


def test_same_seed_same_weights(corpus):
    cfg = dataclasses.replace(FAST, steps=2, precision="fp32")
    split = clip_train.make_split(corpus, cfg, np.random.default_rng(0))
    captions = clip_train.build_captions(corpus, cfg, encoders.compact_tokenizer(cfg.context_length))
    digests = []
    for _ in range(2):
        model = clip_train.build_model(cfg)
        clip_train.train(model, corpus, captions, split, cfg, "cpu")
        digests.append(checkpoints.digest(model.state_dict()))
    assert digests[0] == digests[1]


def test_split_holds_out_whole_concepts_and_single_artist_images(corpus):
    cfg = dataclasses.replace(FAST, heldout_concepts=3, heldout_style_frac=0.5)
    s = clip_train.make_split(corpus, cfg, np.random.default_rng(1))
    assert sorted(np.r_[s.train, s.heldout_style, s.unseen]) == list(range(len(corpus.table)))
    train_c = set(corpus.concept_of[s.train])
    assert not set(corpus.concept_of[s.unseen]) & train_c and len(set(corpus.concept_of[s.unseen])) == 3
    assert set(corpus.concept_of[s.heldout_style]) <= train_c
    named = {corpus.concepts[c] for c in train_c}
    assert {"cow", "automobile", "dog"} <= named  # the concepts the demo names are never held out


def test_batches_hold_distinct_concepts(corpus):
    cfg = dataclasses.replace(FAST, batch_size=8)
    split = clip_train.make_split(corpus, cfg, np.random.default_rng(0))
    captions = clip_train.build_captions(corpus, cfg, encoders.compact_tokenizer(cfg.context_length))
    batcher = clip_train.Batcher(corpus, captions, split.train, cfg, torch.Generator().manual_seed(0))
    for _ in range(5):
        items, rows = batcher.next()
        assert len(set(corpus.concept_of[items])) == len(items) == 8
        assert set(items) <= set(split.train) and len(rows) == 8


def test_schedule_warms_up_then_decays_to_zero():
    cfg = dataclasses.replace(FAST, lr=1e-3, warmup_steps=10)
    lr_at = lambda done, step: warmup_cosine(cfg.lr, step, cfg.warmup_steps, done)  # noqa: E731 - as clip_train.train
    assert lr_at(0.0, 0) == pytest.approx(1e-4)
    assert lr_at(0.01, 20) == pytest.approx(1e-3, rel=1e-3)
    assert lr_at(1.0, 500) == pytest.approx(0.0, abs=1e-12)


def test_metric_helpers_on_known_cases():
    sims = np.array([[0.9, 0.1, 0.0], [0.2, 0.1, 0.8]])
    assert clip_train.topk_accuracy(sims, np.array([0, 1]), (1, 2)) == {1: 0.5, 2: 0.5}
    eye = np.eye(3, dtype=np.float32)
    assert clip_train.recall_at_k(eye, eye, np.arange(3), (1,)) == {"i2t_r1": 1.0, "t2i_r1": 1.0}
    assert clip_train.roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.85])) == 0.75


def test_resume_reuses_and_another_config_is_refused(trained):
    cfg, out, _ = trained
    before = os.stat(out / "clip.pt").st_mtime_ns
    assert clip_train.run(cfg) == out
    assert os.stat(out / "clip.pt").st_mtime_ns == before
    with pytest.raises(ValueError, match="another config"):
        clip_train.run(dataclasses.replace(cfg, steps=cfg.steps + 1))


def test_cli_entry_trains_through_the_generic_command_table(tiny_corpus, tmp_path):
    table = {("clip", "train"): commands.Command("curation.score.clip_train", "ClipTrainConfig", "train")}
    argv = ["-q", "clip", "train", "--preset=tiny", f"--art_dir={tiny_corpus}", f"--out={tmp_path}", "--steps=2",
            "--vision_layers=1,1,1,1", "--text_layers=1", "--text_width=32", "--embed_dim=32", "--minutes=0"]
    assert commands.main(table, "mithridate", argv) == 0
    assert (tmp_path / "clip.pt").is_file()
    assert commands.main(table, "mithridate", argv[:-1] + ["--minutes=-1"]) == 2


@pytest.mark.parametrize("field,value", [("image_size", 48), ("vision_layers", (1, 1)), ("text_heads", 3),
                                         ("heldout_style_frac", 1.5), ("device", "tpu"), ("precision", "fp8"),
                                         ("templates", ("no placeholder",))])
def test_bad_config_is_a_clear_error(field, value):
    with pytest.raises(ValueError, match=field if field != "device" else "device"):
        dataclasses.replace(FAST, **{field: value})


def test_wrong_architecture_checkpoints_are_clear_errors(trained, tmp_path):
    _, out, _ = trained
    ckpt = torch.load(out / "clip.pt", weights_only=True)
    ckpt["model_cfg"] = {**ckpt["model_cfg"], "embed_dim": ckpt["model_cfg"]["embed_dim"] * 2}
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="do not fit"):
        encoders.load_encoder("compact", str(tmp_path / "bad.pt"))
    torch.save({"state_dict": ckpt["state_dict"]}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a compact CLIP checkpoint"):
        encoders.load_encoder("compact", str(tmp_path / "plain.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        encoders.load_encoder("compact", str(tmp_path / "junk.pt"))
    other = tmp_path / "mithridate-test-other.json"  # a tiny architecture of another size, registered with open_clip
    other.write_text(json.dumps(clip_train.model_config(dataclasses.replace(FAST, embed_dim=48))))
    open_clip.add_model_config(other)
    with pytest.raises(ValueError, match="does not hold weights of open_clip architecture mithridate-test-other"):
        encoders.load_encoder("mithridate-test-other", str(out / "clip.pt"), device="cpu")


def test_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="clip train"):
        encoders.load_encoder("compact", str(tmp_path))


def test_unavailable_pretrained_tag_is_a_clear_offline_error(tmp_path):
    with pytest.raises(ValueError, match="not available offline.*pretrained=<path"):
        encoders.load_encoder("ViT-B-32", "laion2b_s34b_b79k", device="cpu", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="not available offline"):
        encoders.load_encoder("RN50", "openai", device="cpu", cache_dir=str(tmp_path))


def test_open_clip_local_dir_export_matches_our_loader(tiny_clip_checkpoint, tmp_path):
    """The exported folder opens in plain open_clip (no mithridate code, no network) with the same embeddings."""
    folder = clip_train.export_open_clip(tiny_clip_checkpoint, tmp_path / "open_clip")
    assert {p.name for p in folder.iterdir()} == {"open_clip_config.json", "open_clip_model.safetensors"}
    assert not (tmp_path / "open_clip.tmp").exists()
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert set(config) >= {"model_cfg", "preprocess_cfg"}

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", device="cpu")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    ours = encoders.load_encoder("compact", str(tiny_clip_checkpoint), device="cpu")
    assert tokenizer.context_length == 16 and isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer)

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((64, 64), (40, 70), (32, 32))]
    texts = ["a cow", "a drawing of a dog in the style of someone", "", "automobile icon " * 10]
    with torch.no_grad():
        pixels = torch.stack([preprocess(encoders._as_pil(im)) for im in images])
        img = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1).numpy()
        txt = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1).numpy()
    np.testing.assert_allclose(img, ours.encode_images(images), rtol=0, atol=1e-5)
    np.testing.assert_allclose(txt, ours.encode_texts(texts), rtol=0, atol=1e-5)
    assert np.abs(img[0] - img[1]).max() > 1e-3 and np.abs(txt[0] - txt[1]).max() > 1e-3  # not degenerate

    # re-exporting another checkpoint over it replaces the weights (no stale files are left behind)
    ckpt = torch.load(tiny_clip_checkpoint, weights_only=True)
    ckpt["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "other.pt")
    clip_train.export_open_clip(tmp_path / "other.pt", folder)
    again, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}", device="cpu")
    with torch.no_grad():
        moved = torch.nn.functional.normalize(again.eval().encode_image(pixels), dim=-1).numpy()
    assert np.abs(moved - img).max() > 1e-4
    assert not (tmp_path / "open_clip.old").exists()


def test_open_clip_export_without_safetensors_writes_a_torch_bin(tiny_clip_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # `from safetensors.torch import …` fails
    folder = clip_train.export_open_clip(tiny_clip_checkpoint, tmp_path / "oc")
    assert {p.name for p in folder.iterdir()} == {"open_clip_config.json", "open_clip_pytorch_model.bin"}
    monkeypatch.undo()
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}", device="cpu")
    ours = encoders.load_encoder("compact", str(tiny_clip_checkpoint), device="cpu")
    tokens = open_clip.get_tokenizer(f"local-dir:{folder}")(["a cow", "dog"])
    with torch.no_grad():
        txt = torch.nn.functional.normalize(model.eval().encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(txt, ours.encode_texts(["a cow", "dog"]), rtol=0, atol=1e-5)


def test_run_writes_the_open_clip_export(trained):
    _, out, metrics = trained
    config = json.loads((out / "open_clip" / "open_clip_config.json").read_text())
    assert config["mithridate"]["name"] == metrics["name"]
    assert (out / "open_clip" / "open_clip_model.safetensors").is_file()
