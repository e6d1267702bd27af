"""The independent judge: a pixel classifier tested on held-out groups, its negative control, save/load, arguments;
the compact-CLIP adapter behind the same interface."""

import json
import math

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from diffusion import data
from mithridate.core.compute import torch_threads
from mithridate.core.lr import warmup_cosine
from poisoning import judge

STEPS = 200  # enough on 36 training images; ~5 s on one thread
HELD_OUT = 0.5  # 12 of the 24 tiny concepts (36 images): a held-out accuracy with a usable resolution


@pytest.fixture(scope="module")
def corpus(tiny_corpus):
    """The tiny art corpus as (uint8 images, artist labels, artist names, concept groups)."""
    s = data.load_corpus(tiny_corpus, 32)
    artists = sorted(set(s.artists))
    groups = [c.split(" emoji by ")[0] for c in s.captions]
    return data.to_uint8(s.images), np.array([artists.index(a) for a in s.artists]), artists, groups


@pytest.fixture(scope="module")
def style_judge(corpus):
    images, labels, artists, groups = corpus
    with torch_threads(1):
        return judge.train(images, labels, artists, groups, held_out=HELD_OUT, steps=STEPS, seed=0)


def _heldout(groups, info):
    return np.isin(groups, info["split"]["heldout_groups"])


def test_style_judge_recognises_artists_on_unseen_concepts(corpus, style_judge):
    images, labels, artists, groups = corpus
    info = style_judge.info()
    assert info["kind"] == "classifier" and "independent" in info["name"] and info["concepts"] == artists
    assert info["chance"] == pytest.approx(1 / 3) and info["steps"] == STEPS and info["seed"] == 0
    held = _heldout(groups, info)
    # split by concept: half the concepts held out, every image of a held-out concept is held out, each artist tested
    assert len(info["split"]["heldout_groups"]) == 12 and info["split"]["train_groups"] == 12
    assert info["heldout_images"] == held.sum() == 36 and info["split"]["train_images"] == len(images) - 36
    assert all(v["images"] == 12 for v in info["heldout_per_class"].values())
    # measured 0.78 (seeds 0-2: 0.78-0.83); shuffled labels give about chance (next test)
    assert info["heldout_accuracy"] >= 0.6
    pred = style_judge.predict(images[held])
    assert pred.dtype == np.int64 and pred.shape == (36,)
    assert (pred == labels[held]).mean() == pytest.approx(info["heldout_accuracy"])
    for k, a in enumerate(artists):
        assert (pred[labels[held] == k] == k).mean() == pytest.approx(info["heldout_per_class"][a]["accuracy"])
    feats = style_judge.features(images[:5])
    assert feats.dtype == np.float32 and feats.shape == (5, 128)
    assert np.linalg.norm(feats, axis=1) == pytest.approx(np.ones(5), abs=1e-5)
    assert info["parameters"] < 1_000_000


def test_shuffled_labels_give_chance_on_heldout_groups(corpus):
    """Negative control: labels shuffled over images carry no style, so only a leak of held-out images into
    training could lift the held-out accuracy above chance — and the judge does memorise what it trains on."""
    images, labels, artists, groups = corpus
    shuffled = np.random.default_rng(100).permutation(labels)
    with torch_threads(1):
        info = judge.train(images, shuffled, artists, groups, held_out=HELD_OUT, steps=STEPS, seed=0).info()
    assert info["train_accuracy"] >= 0.9  # it memorises: held-out images seen in training would score like this
    assert info["heldout_accuracy"] <= 0.55  # measured 0.29 (chance 0.33)


def test_training_is_deterministic_under_the_seed(corpus):
    images, labels, artists, groups = corpus
    with torch_threads(1):
        a, b, c = (judge.train(images, labels, artists, groups, held_out=HELD_OUT, steps=10, seed=s)
                   for s in (3, 3, 4))
    assert np.array_equal(a.features(images), b.features(images))
    assert a.info() == b.info()
    assert not np.array_equal(a.features(images), c.features(images))


def test_the_learning_rate_is_the_shared_warmup_cosine(corpus):
    """5 % linear warm-up, then a cosine to 0 (`mithridate.core.lr`); in float32, as AdamW applies them, the rates
    equal the closed form lr·½(1 + cos(π·(step − warm)/(steps − warm))), so the trained weights did not move."""
    images, labels, artists, groups = corpus
    steps, lr, rates = 40, 2e-3, []
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: rates.append(opt.param_groups[0]["lr"]))
    try:
        with torch_threads(1):
            judge.train(images, labels, artists, groups, held_out=HELD_OUT, steps=steps, lr=lr, seed=0)
    finally:
        hook.remove()
    warm = max(1, round(judge.WARMUP * steps))
    assert rates == [warmup_cosine(lr, s, warm, (s - warm) / (steps - warm), warmup_first=True) for s in range(steps)]
    closed = [lr * (s + 1) / warm if s < warm else lr * 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
              for s in range(steps)]
    assert np.array_equal(np.float32(rates), np.float32(closed)) and rates[warm - 1] == lr


def test_save_load_round_trip_and_clear_errors(corpus, style_judge, tmp_path):
    images = corpus[0]
    folder = judge.save(style_judge, tmp_path / "j")
    assert sorted(p.name for p in folder.iterdir()) == ["judge.json", "judge.pt"]
    assert json.loads((folder / "judge.json").read_text()) == style_judge.info()
    back = judge.load(folder)
    assert back.concepts == style_judge.concepts and back.name == style_judge.name and back.kind == "classifier"
    assert back.info() == style_judge.info()
    assert np.array_equal(back.predict(images), style_judge.predict(images))
    assert np.array_equal(back.features(images), style_judge.features(images))
    with pytest.raises(FileNotFoundError, match="missing"):
        judge.load(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "judge.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad/judge.pt"):
        judge.load(tmp_path / "bad")
    torch.save({"format": "something else"}, tmp_path / "bad" / "judge.pt")
    with pytest.raises(ValueError, match="not a classifier judge"):
        judge.load(tmp_path / "bad")


@pytest.mark.parametrize("change, match", [
    ({"held_out": 0.0}, "held_out"), ({"held_out": 1.0}, "held_out"), ({"held_out": -0.2}, "held_out"),
    ({"labels": "short"}, "labels"), ({"concepts": ["a", "b", "c", "nobody"]}, "labels: .*nobody"),
    ({"labels": "too big"}, "labels"), ({"groups": "short"}, "groups"), ({"groups": "one"}, "groups"),
    ({"images": "float"}, "images"), ({"concepts": ["a", "a", "b"]}, "concepts"), ({"steps": 0}, "steps"),
    ({"batch_size": 0}, "batch_size"), ({"lr": 0.0}, "lr"),
])
def test_bad_arguments_are_named(corpus, change, match):
    images, labels, artists, groups = corpus
    args = {"images": images, "labels": labels, "concepts": ["a", "b", "c"], "groups": groups, "held_out": 0.2,
            "steps": 1}
    fix = {"short": lambda v: v[:-1], "too big": lambda v: v + 3, "one": lambda v: ["g"] * len(v),
           "float": lambda v: v.astype(np.float32)}
    args.update({k: fix[v](args[k]) if isinstance(v, str) else v for k, v in change.items()})
    with pytest.raises(ValueError, match=match):
        judge.train(**args)


def test_group_split_holds_out_groups_of_every_class():
    # subcategory-like classes: each group (concept) belongs to one class; class 2 has a single group
    groups = [f"g{i}" for i in range(10) for _ in range(3)] + ["solo"] * 3
    labels = np.array([0] * 12 + [1] * 18 + [2] * 3)
    held = judge.group_split(groups, labels, 0.2, seed=0)
    held_groups = set(np.asarray(groups)[held])
    for k in (0, 1):
        g = set(np.asarray(groups)[labels == k])
        assert 1 <= len(held_groups & g) < len(g)  # each class with >= 2 groups is tested and still trained
    assert "solo" not in held_groups  # a class's only group stays in training
    assert all(held[i] == (groups[i] in held_groups) for i in range(len(groups)))  # whole groups
    assert np.array_equal(held, judge.group_split(groups, labels, 0.2, seed=0))
    assert not np.array_equal(held, judge.group_split(groups, labels, 0.2, seed=1))


def test_clip_judge_adapter(tiny_clip_checkpoint, corpus):
    images, labels, _, _ = corpus
    concepts = ["cat", "house", "anchor"]
    clip = judge.ClipJudge(tiny_clip_checkpoint, concepts, "cpu", label=judge.VICTIM_LABEL)
    assert clip.kind == "clip" and "the victim's own CLIP (not independent)" in clip.name
    assert clip.info()["heldout_accuracy"] is None
    feats = clip.features(images[:6])
    assert np.linalg.norm(feats, axis=1) == pytest.approx(np.ones(6), abs=1e-4)
    pred = clip.predict(images[:6])
    assert np.array_equal(pred, (feats @ clip.clip.text_emb.T).argmax(axis=1))
    acc = clip.calibrate(images[:6], labels[:6])
    info = clip.info()
    assert info["heldout_accuracy"] == pytest.approx((pred == labels[:6]).mean()) == acc["accuracy"]
    assert info["heldout_images"] == 6 and info["chance"] == pytest.approx(1 / 3) and info["split"]
    assert "not independent" not in judge.ClipJudge(tiny_clip_checkpoint, concepts, "cpu").name
