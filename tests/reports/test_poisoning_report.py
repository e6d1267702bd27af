"""`report poisoning` on a real tiny `poison sweep`: the page's sections, and metrics recomputed from results."""

import dataclasses
import json

import pandas as pd
import pytest

from mithridate import cli
from poisoning.dose_figure import pooled
from reports import poisoning as report

SECTIONS = ("Headline", "Preconditions", "Setup", "Dose response", "ε sweep", "Attack success", "Generations", "Bleed-through", "Collateral", "Model implosion",
            "Poisons", "Defences", "How to read this")


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def built(tiny_sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    page = report.build(report.PoisoningReportConfig(sweep=str(tiny_sweep), out=str(out)))
    return page, json.loads((out / "poisoning_metrics.json").read_text())


def test_page_has_every_section_and_the_setup(built, tiny_sweep):
    page, _ = built
    html = page.read_text(encoding="utf-8")
    info = json.loads((tiny_sweep / "sweep.json").read_text())
    for title in SECTIONS:
        assert f"{title}</h2>" in html
    for text in ("cat", "house", info["budget_label"], "benign N=2"):
        assert text in html
    assert report.headline(tiny_sweep) in html.replace("&#x27;", "'")


def test_metrics_match_results(built, tiny_sweep):
    _, m = built
    t = pd.read_parquet(tiny_sweep / "results.parquet")
    src = t[(t.role == "source") & (t.purification == "none") & ~t.eps_sweep]
    for (attack, n), g in src.groupby(["attack", "n"]):
        key = "poisoning/control" if attack == "none" else f"poisoning/{attack}/n{n}"
        p, lo, hi = pooled(g, "hits_target")
        assert (m[f"{key}/p_target"], m[f"{key}/p_target_low"], m[f"{key}/p_target_high"]) == (p, lo, hi)
        assert m[f"{key}/p_source"] == pooled(g, "hits_prompt")[0]
    jpeg = t[(t.role == "source") & (t.purification == "jpeg") & (t.attack == "nightshade")]
    assert m["poisoning/purify/jpeg/nightshade/p_target"] == pooled(jpeg, "hits_target")[0]
    d = json.loads((tiny_sweep / "defences.json").read_text())
    assert m["poisoning/clip_filter/dirty_label/pass_rate"] == d["clip_filter"]["attacks"]["dirty_label"]["pass_rate"]
    assert m["poisoning/detector/nightshade/auc"] == d["detector"]["attacks"]["nightshade"]["auc"]
    assert m["poisoning/setup/clean_source_samples"] == 3


def test_missing_sweep_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"sweep\.json.*poison sweep"):
        report.build(report.PoisoningReportConfig(sweep=str(tmp_path / "nowhere"), out=str(tmp_path / "r")))


def test_cli_help():
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", "poisoning", "--help"])
    assert exit_.value.code == 0


def test_implosion_victims_have_their_own_section_not_the_sweep_tables(built, tiny_sweep):
    import pandas as pd

    path, m = built
    html = path.read_text()
    t = pd.read_parquet(tiny_sweep / "results.parquet")
    for name, g in t[t.implosion > 0].groupby("victim"):
        assert name in html
        assert m[f"poisoning/implosion/{name}/pairs"] == 2
        others = g[g.role == "others"]
        share = others.hits_prompt.sum() / others.generations.sum()
        assert m[f"poisoning/implosion/{name}/accuracy"] == pytest.approx(share)
    plain = t[(t.implosion == 0) & (t.role == "source") & (t.attack == "nightshade") & (t.n == 2)]
    assert m["poisoning/nightshade/n2/p_target"] == pytest.approx(plain.hits_target.sum() / plain.generations.sum())


def test_attackability_and_study_sections(tiny_sweep, tiny_train, tmp_path):
    from diffusion import pipeline
    from poisoning import attackability, study

    source = pipeline.read_checkpoint(json.loads((tiny_sweep / "sweep.json").read_text())["config"]["checkpoint"])
    att = attackability.run(dataclasses.replace(attackability.PRESETS["tiny"], vae=source["vae"]["source"],
                                                data=str(tiny_train), out=str(tmp_path / "att")))
    st = study.run(dataclasses.replace(study.PRESETS["tiny"], data=str(tiny_train), out=str(tmp_path / "study"),
                                       seeds=(0,)))
    page = report.build(report.PoisoningReportConfig(sweep=str(tiny_sweep), out=str(tmp_path / "r"),
                                                     attackability=str(att), study=str(st)))
    html = page.read_text()
    assert "Autoencoder design study" in html and "32px-f4-robust" in html and "gap closed" in html
    m = json.loads((tmp_path / "r" / "poisoning_metrics.json").read_text())
    points = json.loads(att.read_text())["points"]
    assert m[f"poisoning/attackability/eps{points[0]['eps_255']:g}/gap_closed"] == pytest.approx(
        points[0]["gap_closed"][0])
    assert "poisoning/study/32px-f4/recon_psnr_db" in m


def test_several_pairs_get_their_own_sections_and_metrics(tiny_sweep, tmp_path):
    cfg = report.PoisoningReportConfig(sweep=str(tiny_sweep), more=(str(tiny_sweep),), out=str(tmp_path))
    parts, m = report.sections(cfg)
    titles = [t for t, _ in parts]
    assert titles.count("cat → house: Dose response") == 2 and titles.count("cat → house: Preconditions") == 2
    assert m["poisoning/cat-house/preconditions_ok"] == m["poisoning/preconditions_ok"]
    assert report.headline_all([tiny_sweep, tiny_sweep]).count("[cat → house]") == 2


def test_no_rate_in_the_page_has_a_zero_width_interval(built):
    import re

    html = built[0].read_text(encoding="utf-8")
    pairs = re.findall(r"(\d\.\d\d) \[(\d\.\d\d), (\d\.\d\d)\]", html.replace("\u00a0", " "))
    assert pairs and not [p for p in pairs if p[1] == p[2]]


def test_story_takes_other_sweeps_and_refuses_a_folder_without_results(tiny_sweep, tmp_path):
    from reports import story

    with pytest.raises(ValueError, match="sweeps.*results.parquet"):
        story.StoryConfig(run=str(tmp_path), sweeps=(str(tmp_path / "nowhere"),))
    assert story._sweeps(tmp_path, (str(tiny_sweep),)) == [tiny_sweep]


def test_attacks_side_by_side_table_has_every_attack_its_budget_and_craft_time(built, tiny_sweep):
    import html as html_lib
    import re

    page, _ = built
    text = page.read_text(encoding="utf-8")
    seg = text[text.index("Attacks side by side"):]
    seg = seg[:seg.index("</table>")]
    cells = [html_lib.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", seg)]
    header = cells[:cells.index("CLIP filter pass") + 1]
    assert header[0] == "attack" and "P(house) at" in header[1] and "craft s/poison" in header
    rows = [dict(zip(header, cells[i:i + len(header)])) for i in range(len(header), len(cells), len(header))]
    by = {r["attack"]: r for r in rows}
    assert set(by) == {"nightshade", "dirty-label", "positive control (anchor image as poison)"}
    assert float(by["nightshade"]["L∞ ×255"]) <= 0.04 * 255 + 0.5 and float(by["nightshade"]["craft s/poison"]) > 0
    assert by["dirty-label"]["PSNR dB"] == "—"  # no pixel change
