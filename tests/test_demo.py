import json

import pytest

from curation.world import web
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
    seen = {"x-robots-tag" if s.startswith("x-robots-tag") else s.split("@")[0]  # :noai, …; @host
            for s in down["optout_signals"]}
    assert seen == PLANTED_SIGNALS
    assert down["status"]["success"] > 0 and down["recorded_optouts"] > 0  # policy record: the filter honours
    assert down["rows"] == crawl["pairs"]
    assert "downloaded" in caplog.text and str(tmp_path) in caplog.text
    assert "min left (report, generation, poisoning, optout, integrity)" in caplog.text  # the ETA after part 1
    assert "demo finished in" in caplog.text and "integrity" in caplog.text.split("demo finished in")[1]
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
    # part 5: opt-out evaluation (policies vs retraining without the artist) and the integrity check
    opt = json.loads((tmp_path / "optout" / "optout.json").read_text())
    ds = opt["datasets"]
    assert set(ds) == {"honor", "url_only", "ignore", "without_artist"} and ds["without_artist"]["artist_rows"] == 0
    assert ds["honor"]["artist_rows"] <= ds["url_only"]["artist_rows"] <= ds["ignore"]["artist_rows"]
    assert ds["ignore"]["artist_rows"] > 0 and 0 < opt["probe"]["heldout_accuracy"] <= 1
    gold = [r for r in opt["summary"] if r["model"] == "without_artist"]
    assert len(gold) == 3 and all(r["diff_vs_gold"] == 0 for r in gold)
    integ = json.loads((tmp_path / "rebuild" / "integrity.json").read_text())["modes"]
    assert integ["sha256"]["changed"] > 0 and integ["sha256"]["admitted"] == 0
    assert integ["none"]["admitted"] == integ["none"]["changed"] == integ["sha256"]["changed"]
    # part 4: a concept pair with many clean images (style, on the tiny corpus) poisoned beside its controls
    s = json.loads((tmp_path / "pair-style" / "sweep" / "sweep.json").read_text())
    assert (s["source"], s["target"]) == ("twemoji", "notomono") and s["judge_info"]["kind"] == "classifier"
    assert set(s["doses"]) == {"nightshade", "dirty_label", "anchor"} and len(s["preconditions"]["checks"]) == 3
    # one page with a table of contents over every part, and metrics.json
    index = (tmp_path / "report" / "index.html").read_text()
    for part in ("Dataset", "Model", "Poisoning", "Opt-out", "Integrity"):
        assert f'">{["Dataset", "Model", "Poisoning", "Opt-out", "Integrity"].index(part) + 1}. {part}' in index
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["integrity/sha256/admitted"] == 0 and "optout/honor/names_artist/diff_vs_gold_ci" in m
    assert isinstance(m["poisoning/preconditions_ok"], bool) and "Preconditions</h3>" in index
    # ground truth of the expiry log: replaced pictures get in only without verification
    assert m["integrity/none/expired_admitted"] == m["integrity/none/expired_changed"] > 0
    assert m["integrity/sha256/expired_admitted"] == m["integrity/phash/expired_admitted"] == 0
    assert "dataset/funnel/downloaded" in m or any(k.startswith("dataset/funnel/") for k in m)
    assert "generation/generation/chance" not in m and "generation/chance" in m


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


def test_an_interrupted_demo_resumes_after_its_last_finished_part(tmp_path, cache_dir, caplog, monkeypatch):
    from reports import demo

    args = ["demo", "--preset=tiny", f"--out={tmp_path}", f"--cache_dir={cache_dir}"]

    def broken(*a):
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(demo, "_part3", broken)
    with pytest.raises(RuntimeError, match="killed"):
        demo.run(demo.DemoConfig(**{**demo.PRESETS["tiny"].__dict__, "out": str(tmp_path),
                                    "cache_dir": str(cache_dir), "stop_after": "generation"}))
    shards = sorted((tmp_path / "shards").glob("*.parquet"))
    stamp = [f.stat().st_mtime_ns for f in shards]
    assert (tmp_path / "_parts" / "report.done").is_file() and not (tmp_path / "_parts" / "generation.done").exists()
    monkeypatch.undo()
    caplog.set_level("INFO")
    assert main(args + ["--stop_after=generation"]) == 0
    assert "part 'download' finished earlier, skipped" in caplog.text and "part 'report' finished earlier" in caplog.text
    assert [f.stat().st_mtime_ns for f in shards] == stamp  # not downloaded again
    assert (tmp_path / "_parts" / "generation.done").is_file() and (tmp_path / "report" / "index.html").is_file()


def test_demo_refuses_a_study_folder_without_study_json(tmp_path, capsys):
    assert main(["demo", f"--study={tmp_path}"]) == 2
    assert "study.json" in capsys.readouterr().err


def test_demo_checks_the_integrity_sites_before_running(capsys):
    assert main(["demo", "--expire=aggregater"]) == 2
    assert "expire=['aggregater']" in capsys.readouterr().err


def test_the_demo_eta_scales_the_reference_times_by_this_machines_pace(caplog):
    from reports import demo

    clock = demo.Clock(("download", "report", "generation"))
    assert clock.eta() == sum(demo.REFERENCE_S[p] for p in clock.parts)
    caplog.set_level("INFO")
    clock.finished("download", 2 * demo.REFERENCE_S["download"])  # this machine: half the reference's pace
    assert clock.eta() == pytest.approx(2 * (demo.REFERENCE_S["report"] + demo.REFERENCE_S["generation"]))
    assert f"about {clock.eta() / 60:.1f} min left (report, generation)" in caplog.text
