"""`mithridate report story`: the demo's whole story on one page — dataset, model, poisoning, opt-out and integrity
parts, each with its headline and sections, a table of contents, and every part's metrics in one `metrics.json` (at the run folder's root).

Reads a demo run folder (the stage sub-folders `mithridate demo` writes); a part whose folder is missing is
skipped (a demo stopped early with `--stop_after`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from mithridate.core import disk, options
from reports import dataset, generation, html as H, integrity, optout, poisoning

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoryConfig:
    run: str = options.opt("mithridate-out/demo", "a demo run folder (one sub-folder per stage)")
    out: str = options.opt("", "output folder of index.html ('' = <run>/report); metrics.json goes to <run>")
    sweeps: tuple[str, ...] = options.opt((), "`poison sweep` folders to show in the poisoning part instead of the "
                                          "run's own (e.g. the README's multi-seed dose sweeps)")

    def __post_init__(self):
        if isinstance(self.sweeps, list):
            object.__setattr__(self, "sweeps", tuple(self.sweeps))
        for f in self.sweeps:
            if not (Path(f) / "results.parquet").is_file():
                raise ValueError(f"StoryConfig.sweeps: {f!r} has no results.parquet (run `mithridate poison sweep`)")


PRESETS = {"default": StoryConfig()}


def _dataset(run: Path) -> tuple | None:
    if not (run / "train").is_dir():
        return None
    cfg = dataset.DatasetReportConfig(crawl=str(run / "crawl"), shards=str(run / "shards"), filter=str(run / "filter"),
                                      export=str(run / "train"), manifest=str(run / "web" / "web_manifest.parquet"),
                                      out=str(run / "report"), clip=str(_clip(run)))
    parts, m = dataset.sections(cfg)
    steps = {k[len("funnel/"):].replace("_", " "): v for k, v in m.items() if k.startswith("funnel/")}
    intro = H.note(", ".join(f"{k}: {v}" for k, v in steps.items()))
    return "Dataset: crawl, download, curation", intro, parts, m


def _clip(run: Path) -> Path:
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    return Path(cfg.get("clip_dir") or run / "clip")


def _generation(run: Path) -> tuple | None:
    if not (run / "evaluate" / "evaluation.json").is_file():
        return None
    cfg = generation.GenerationReportConfig(vae=str(run / "vae"), diffusion=str(run / "diffusion"),
                                            evaluate=str(run / "evaluate"), out=str(run / "report"))
    parts, m = generation.sections(cfg)
    ev = json.loads((run / "evaluate" / "evaluation.json").read_text())
    return "Model: autoencoder and latent diffusion", H.note(generation.headline(ev)), parts, m


def _sweeps(run: Path, given: tuple = ()) -> list[Path]:
    """The poisoning sweeps: those given, else those the demo listed in poison-sweeps.json, else the one folder."""
    if given:
        return [Path(f) for f in given]
    listed = run / "poison-sweeps.json"
    found = [Path(f) for f in json.loads(listed.read_text())] if listed.is_file() else [run / "poison-sweep"]
    return [f for f in found if (f / "results.parquet").is_file()]


def _poisoning(run: Path, given: tuple = ()) -> tuple | None:
    sweeps = _sweeps(run, given)
    if not sweeps:
        return None
    att = run / "vae" / "attackability.json"
    study = json.loads((run / "config.json").read_text()).get("study", "") if (run / "config.json").is_file() else ""
    cfg = poisoning.PoisoningReportConfig(sweep=str(sweeps[0]), more=tuple(str(s) for s in sweeps[1:]),
                                          out=str(run / "report"), attackability=str(att) if att.is_file() else "",
                                          study=study or "")
    parts, m = poisoning.sections(cfg)
    return ("Poisoning: realistic doses, Nightshade-style vs dirty-label, beside controls",
            H.note(poisoning.headline_all(sweeps)), parts, m)


def _optout(run: Path) -> tuple | None:
    if not (run / "optout" / "optout.json").is_file():
        return None
    return ("Opt-out: does honouring it remove the artist from the model?",
            H.note(optout.headline(optout.load(run / "optout"))), optout.sections(run / "optout"),
            optout.metrics(run / "optout"))


def _integrity(run: Path) -> tuple | None:
    if not (run / "rebuild" / "integrity.json").is_file():
        return None
    report, kinds = integrity.load(run / "rebuild", run / "web-after" / "web_expiry.parquet")
    return ("Integrity: do hashes stop split-view poisoning?", H.note(integrity.headline(report, kinds)),
            integrity.sections(report, kinds), integrity.metrics(report, kinds))


def build(cfg: StoryConfig) -> Path:
    """Write `<out>/index.html` (every part, one table of contents) and `<run>/metrics.json`; returns the HTML."""
    run = Path(cfg.run)
    if not run.is_dir():
        raise FileNotFoundError(f"StoryConfig.run={cfg.run!r}: not a folder (run `mithridate demo` first)")
    out = Path(cfg.out) if cfg.out else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    names = ("dataset", "generation", "poisoning", "optout", "integrity")
    found = [(n, p) for n, p in zip(names, (_dataset(run), _generation(run), _poisoning(run, cfg.sweeps), _optout(run),
                                            _integrity(run))) if p is not None]
    if not found:
        raise ValueError(f"StoryConfig.run={cfg.run!r}: no finished stage to report (no train/, evaluate/, …)")
    glance = "".join(f"<p><strong>{H.esc(title)}</strong></p>{intro}" for _, (title, intro, _, _) in found)
    page = H.story("mithridate: what is in this dataset, who opted out, how easily can it be poisoned?",
                   [(title, intro, parts) for _, (title, intro, parts, _) in found],
                   f"<p>run folder: {H.esc(run)}</p><h2>At a glance</h2>{glance}")
    disk.write_text(out / "index.html", page)
    metrics = {}
    for name, (_, _, _, m) in found:
        metrics.update({k if k.startswith(f"{name}/") else f"{name}/{k}": v for k, v in m.items()})
    disk.write_text(run / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True, default=float) + "\n")
    logger.info("report: %s (%d parts), metrics: %s", out / "index.html", len(found), run / "metrics.json")
    return out / "index.html"
