"""`poison attackability` on a tiny autoencoder: the curve rises with ε, transfer is measured, bad pairs are clear."""

import dataclasses
import json

import pytest

from diffusion import vae_train as vae
from poisoning import attackability


@pytest.fixture(scope="module")
def two_vaes(tiny_train, tmp_path_factory):
    return [vae.run(dataclasses.replace(vae.PRESETS["tiny"], data=str(tiny_train), seed=s, steps=30,
                                        out=str(tmp_path_factory.mktemp(f"vae{s}")))) for s in (0, 1)]


def test_curve_rises_with_budget_and_measures_transfer(tiny_train, two_vaes):
    cfg = dataclasses.replace(attackability.PRESETS["tiny"], vae=str(two_vaes[0]), data=str(tiny_train),
                              transfer=str(two_vaes[1]), eps=(1 / 255, 32 / 255), steps=20)
    path = attackability.run(cfg)
    assert path.parent == two_vaes[0] and (two_vaes[0] / "attackability.png").is_file()
    r = json.loads(path.read_text())
    low, high = r["points"]
    assert low["images"] == high["images"] == 2
    assert 0 < low["gap_closed"][0] < high["gap_closed"][0] <= 1  # a bigger budget closes more of the gap
    assert low["psnr"][0] > high["psnr"][0]  # … at a visible cost
    assert low["gap_closed"][1] <= low["gap_closed"][0] <= low["gap_closed"][2]
    assert "gap_closed_transfer" in high and high["gap_closed_transfer"][0] < high["gap_closed"][0]
    assert r["verdict"]["best_invisible_gap"] == pytest.approx(low["gap_closed"][0])  # 1/255 is invisible; 32 is not


def test_verdict_counts_only_invisible_budgets():
    def point(eps_255, gap, psnr):
        return {"eps": eps_255 / 255, "gap_closed": [gap, gap, gap], "psnr": [psnr, psnr, psnr]}

    loud = point(32, 0.9, 20.0)  # closes most of the gap, but visibly: does not count
    assert attackability.verdict([point(8, 0.3, 35.0), loud]) == {
        "goal": attackability.verdict([])["goal"], "best_invisible_gap": 0.3, "attackable": False}
    assert attackability.verdict([point(4, 0.2, 40.0), point(8, 0.6, 33.0), loud])["attackable"] is True
    assert attackability.verdict([point(8, 0.7, 25.0)])["best_invisible_gap"] is None  # too low a PSNR


def test_bad_pairs_and_budgets_are_clear(tiny_train, two_vaes):
    with pytest.raises(ValueError, match="pairs"):
        attackability.AttackabilityConfig(pairs=("cat-house",))
    with pytest.raises(ValueError, match="pairs"):
        attackability.AttackabilityConfig(pairs=("cat:cat",))
    with pytest.raises(ValueError, match="eps"):
        attackability.AttackabilityConfig(eps=(8,))
    cfg = dataclasses.replace(attackability.PRESETS["tiny"], vae=str(two_vaes[0]), data=str(tiny_train),
                              pairs=("unicorn:house",))
    with pytest.raises(ValueError, match="source 'unicorn' names no image"):
        attackability.run(cfg)
