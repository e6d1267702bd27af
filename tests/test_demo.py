import json

import pytest

from curation import web
from mithridate.cli import main

PLANTED_REASONS = {"http_404", "decode_error", "wrong_content_type", "timeout", "redirect_loop", "too_large",
                   "too_many_pixels", "too_small"}
PLANTED_SIGNALS = {"meta:noai", "meta:noimageai", "robots:GPTBot", "robots:CCBot", "tdmrep:header",
                   "tdmrep:well-known", "ai.txt", "x-robots-tag"}


def test_tiny_demo_prints_a_funnel_with_every_planted_category(tmp_path, cache_dir, caplog):
    caplog.set_level("INFO")
    assert main(["demo", "--preset=tiny", f"--out={tmp_path}", f"--cache_dir={cache_dir}"]) == 0
    funnel = json.loads((tmp_path / "funnel.json").read_text())
    crawl, down = funnel["crawl"], funnel["download"]
    assert crawl["pages_fetched"] > 0 and crawl["pages_disallowed_by_robots"] > 0
    assert set(down["failure_reasons"]) == PLANTED_REASONS and min(down["failure_reasons"].values()) > 0
    assert set(down["optout_signals"]) == PLANTED_SIGNALS
    assert down["status"]["success"] > 0 and down["status"]["opted_out"] > 0
    assert down["rows"] == crawl["pairs"]
    assert "downloaded" in caplog.text and str(tmp_path) in caplog.text
    assert len(web.FAILURES) == len(PLANTED_REASONS)
    # part 3: autoencoder → diffusion on a concept subset → evaluation → generation report
    ev = json.loads((tmp_path / "evaluate" / "evaluation.json").read_text())
    assert 2 <= len(ev["concepts"]) <= 8 and [r["run"] for r in ev["runs"]] == ["ddim:5", "euler:4"]
    page = (tmp_path / "report" / "generation.html").read_text()
    assert "Evaluation per sampler" in page and "recognises the prompted concept" in page
    sweep = json.loads((tmp_path / "evaluate" / "classifier_guidance.json").read_text())
    assert [r["classifier_scale"] for r in sweep] == [0.0, 10.0, 30.0] and "Classifier guidance" in page
    gm = json.loads((tmp_path / "report" / "generation_metrics.json").read_text())
    assert gm["generation/chance"] == ev["runs"][0]["chance"] and "generation/vae_psnr_heldout_db" in gm


def test_demo_rejects_bad_values(capsys):
    assert main(["demo", "--timeout_s=-1"]) == 2
    assert "timeout_s" in capsys.readouterr().err


def test_demo_checks_eval_runs_before_running(capsys):
    assert main(["demo", "--eval_runs=ddim:50,plms:10"]) == 2
    assert "plms:10" in capsys.readouterr().err


def test_a_chosen_poison_pair_must_be_among_the_model_concepts():
    from reports import demo

    concepts = ["cat", "house", "anchor"]
    assert demo.poison_pair(demo.DemoConfig(), concepts) == ("cat", "anchor")  # the default pair falls back
    assert demo.poison_pair(demo.DemoConfig(poison_source="house", poison_target="cat"), concepts) == ("house", "cat")
    with pytest.raises(ValueError, match="poison_source='cats'.*close names: cat"):
        demo.poison_pair(demo.DemoConfig(poison_source="cats"), concepts)
