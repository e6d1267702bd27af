"""Judging a victim: generations on fixed noise, labelled by a zero-shot judge, turned into rates with intervals.

Rates of one model carry exact (Clopper–Pearson) intervals: 0 of 64 generations is [0, 0.056], never [0, 0].
The judge (`poisoning.judge`) only needs `predict(images)` and `features(images)`.

Prompt groups (`role`): "source" (C), "near"/"far" (bleed-through: the concepts nearest to and farthest from C
in the text encoder's pooled space), "others" (collateral: every concept but C and A → accuracy and KID against
the real images) and "implosion" (each pair of a many-concept attack → P(its own target)).
"""

from __future__ import annotations

import math

import numpy as np

from diffusion import metrics
from diffusion.pipeline import Pipeline
from poisoning import intervals


def bleed_concepts(pipe: Pipeline, concepts: list[str], source: str, target: str, k: int) -> dict[str, list]:
    """The `k` concepts nearest to and farthest from the source in the text encoder's pooled space."""
    others = [c for c in concepts if c not in (source, target)]
    if k == 0 or not others:
        return {"near": [], "far": []}
    emb = pipe.text.encode([source] + others).pooled.numpy()
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = emb[1:] @ emb[0]
    order = np.argsort(-sim, kind="stable")
    k = min(k, len(others) // 2 or 1)
    near = [(others[i], float(sim[i])) for i in order[:k]]
    far = [(others[i], float(sim[i])) for i in order[::-1][:k] if others[i] not in dict(near)]
    return {"near": near, "far": far}


def rate_row(pred: np.ndarray, prompt: int, target: int) -> dict:
    """Counts and exact (Clopper–Pearson) 95% intervals of P(judge says the prompt) and P(judge says the target)
    among one model's generations."""
    hit_prompt, hit_target = pred == prompt, pred == target
    p, lo, hi = intervals.exact(int(hit_prompt.sum()), pred.size)
    t, tlo, thi = intervals.exact(int(hit_target.sum()), pred.size)
    return {"generations": int(pred.size), "hits_prompt": int(hit_prompt.sum()), "hits_target": int(hit_target.sum()),
            "p_prompt": p, "p_prompt_low": lo, "p_prompt_high": hi, "p_not_prompt": 1 - p,
            "p_not_prompt_low": 1 - hi, "p_not_prompt_high": 1 - lo, "p_target": t, "p_target_low": tlo,
            "p_target_high": thi}


class Measurer:
    """Generates with a victim on fixed noise and judges the images (`cfg`: a `SweepConfig`)."""

    def __init__(self, cfg, concepts: list[str], judge, real_feats: np.ndarray,
                 real_labels: np.ndarray, groups: dict):
        self.cfg, self.concepts, self.judge = cfg, concepts, judge
        self.real_feats, self.real_labels, self.groups = real_feats, real_labels, groups
        self.source, self.target = concepts.index(cfg.source), concepts.index(cfg.target)

    def _predict(self, pipe: Pipeline, prompts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        texts = [self.cfg.prompt.format(p) for p in prompts]
        images = pipe.generate(texts, self.cfg.sampler, self.cfg.sample_steps, self.cfg.guidance, seed=0)
        return self.judge.predict(images), self.judge.features(images), images

    def measure(self, pipe: Pipeline, detailed: bool, pairs: tuple = ()) -> tuple[list[dict], np.ndarray]:
        """Rows (one per prompt group) and the source generations."""
        if pairs:
            return self.implosion(pipe, pairs)
        cfg, rows = self.cfg, []
        pred, _, images = self._predict(pipe, [cfg.source] * cfg.generations)
        rows.append({"role": "source", "concept": cfg.source, "similarity": 1.0,
                     **rate_row(pred, self.source, self.target)})
        if not detailed:
            return rows, images
        for role in ("near", "far"):
            for concept, sim in self.groups[role]:
                pred, _, _ = self._predict(pipe, [concept] * cfg.bleed_generations)
                rows.append({"role": role, "concept": concept, "similarity": sim,
                             **rate_row(pred, self.concepts.index(concept), self.target)})
        rows += self.collateral(pipe)
        return rows, images

    def implosion(self, pipe: Pipeline, pairs: tuple) -> tuple[list[dict], np.ndarray]:
        """Rows "implosion" (each poisoned pair's P(own target)) and "others" (general quality)."""
        rows, shown = [], None
        for source, target in pairs:
            pred, _, images = self._predict(pipe, [source] * self.cfg.bleed_generations)
            shown = images if shown is None else shown
            rows.append({"role": "implosion", "concept": source, "target_concept": target, "similarity": math.nan,
                         **rate_row(pred, self.concepts.index(source), self.concepts.index(target))})
        return rows + self.collateral(pipe), shown

    def collateral(self, pipe: Pipeline) -> list[dict]:
        """One "others" row: accuracy and KID on every concept but the source and target."""
        cfg, rows = self.cfg, []
        others = [c for c in self.concepts if c not in (cfg.source, cfg.target)]
        if cfg.collateral_per_concept and others:
            prompts = [c for c in others for _ in range(cfg.collateral_per_concept)]
            labels = np.array([self.concepts.index(c) for c in prompts])
            pred, feats, _ = self._predict(pipe, prompts)
            rates = rate_row((pred == labels).astype(int), 1, -1)  # p_prompt = concept accuracy
            rates.update({k: math.nan for k in ("p_target", "p_target_low", "p_target_high")}, hits_target=0)
            row = {"role": "others", "concept": f"{len(others)} other concepts", "similarity": math.nan, **rates}
            real = self.real_feats[np.isin(self.real_labels, labels)]
            row["kid"] = metrics.kid(real, feats)[0] if len(real) >= 2 and len(feats) >= 2 else math.nan
            rows.append(row)
        return rows
