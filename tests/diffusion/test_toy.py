"""The 2-D toy experiment: a tiny run learns and writes its outputs; bad configs fail clearly."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from diffusion import cli, toy


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    # A strong-noise schedule (ᾱ_T ≈ 0.005): the ε-loss floor is then low enough for learning to halve the
    # loss within 300 steps (with the article's ᾱ_T ≈ 0.28 the irreducible loss at small t is ≈ 0.6).
    out = tmp_path_factory.mktemp("toy")
    cfg = dataclasses.replace(toy.PRESETS["tiny"], out=str(out), beta_end=0.3)
    return toy.run(cfg)


def test_tiny_run_writes_metrics_and_figures(tiny_run):
    summary = json.loads((tiny_run / "toy.json").read_text())
    assert list(summary["variants"]) == list(toy.VARIANTS)
    for m in summary["variants"].values():
        assert {"chamfer", "mmd", "steps", "seconds", "loss_first", "loss_last"} <= set(m)
        assert m["chamfer"] > 0 and np.isfinite(m["mmd"]) and m["steps"] == 300
    assert summary["variants"]["fourier_shifted"]["alpha_bar_T"] == pytest.approx(0.6)
    assert {"ordering_holds", "best", "seconds", "data_vs_fresh_data"} <= set(summary)
    for name in ("variants.png", "forward.png", "trajectories.png", "losses.png", "config.json"):
        assert (tiny_run / name).stat().st_size > 1000 or name == "config.json"


def test_tiny_run_loss_halves(tiny_run):
    m = json.loads((tiny_run / "toy.json").read_text())["variants"]["fourier"]
    assert m["loss_last"] < m["loss_first"] / 2


def test_bad_dataset_and_variant_raise(tmp_path):
    base = dataclasses.replace(toy.PRESETS["tiny"], out=str(tmp_path))
    with pytest.raises(ValueError, match="moons, circles, dino"):
        toy.run(dataclasses.replace(base, dataset="swissroll"))
    with pytest.raises(ValueError, match="no_time, time, fourier, fourier_shifted"):
        toy.run(dataclasses.replace(base, variants=("time", "unet")))
    assert cli.main(["toy", "--preset", "tiny", "--out", str(tmp_path), "--variants", "bogus"]) == 2


def test_dino_from_tsv(tmp_path):
    path = tmp_path / "datasaurus.tsv"
    rows = ["dataset\tx\ty"] + [f"dino\t{i}\t{i * i % 7}" for i in range(20)] + ["star\t1\t2"]
    path.write_text("\n".join(rows) + "\n")
    pts = toy.make_data(dataclasses.replace(toy.PRESETS["tiny"], dataset="dino", tsv_path=str(path)), 500, 0)
    assert pts.shape == (20, 2)
    assert np.allclose(pts.mean(0), 0, atol=1e-6) and pts.std() == pytest.approx(1, rel=1e-5)


def test_silhouette_points_lie_on_dark_pixels():
    image = np.full((8, 8, 3), 255, np.uint8)
    image[2:4, 5:7] = 0  # rows 2–3, columns 5–6
    pts = toy.silhouette_points(image, 200, np.random.default_rng(0))
    assert (pts[:, 0] >= 5).all() and (pts[:, 0] <= 7).all()
    assert (pts[:, 1] >= 4).all() and (pts[:, 1] <= 6).all()  # y up: 8 - row


def test_metrics_are_zero_for_identical_sets_and_grow_with_shift():
    a = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    assert toy.chamfer(a, a) == 0 and abs(toy.mmd(a, a)) < 1e-12
    assert toy.chamfer(a, a + 1) > toy.chamfer(a, a + 0.1) and toy.mmd(a, a + 1) > toy.mmd(a, a + 0.1)


def test_dino_concept_fallback_and_clear_error():
    import pandas as pd

    table = pd.DataFrame({"concept": ["cow", "T-Rex", "T-Rex"], "artist": ["b", "b", "a"]})
    row = toy._dino_row(table)
    assert (row["concept"], row["artist"]) == ("T-Rex", "a")
    with pytest.raises(ValueError, match="no dinosaur concept"):
        toy._dino_row(table[table["concept"] == "cow"])
