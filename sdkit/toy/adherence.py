"""What reranking buys, measured in the toy world: prompt adherence of CLIP's top-1 vs the average.

For each of the 12 prompts, `n * groups` seeded candidates are generated with sdkit's
`generate` and split into `groups` independent sets of `n` (seeds `seed + k`). Each image
is judged by the pixel checker (`shapes.check`), never by CLIP. Then, per set:

- mean: the fraction of all candidates that match their prompt (what a random pick gets on average);
- random pick: one candidate drawn by a seeded RNG;
- top-1: the candidate `rank` puts first after scoring with each CLIP backend;
- control: top-1 when the scores were computed against a wrong prompt (other shape, other
  colour) - a ranking that helped there would be measuring something other than the prompt;
- best possible: the fraction of sets with at least one matching candidate.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sdkit.toy import shapes


@dataclass
class ToyQuality:
    """Adherence figures of one evaluation, with the settings that reproduce them."""

    model: str
    n: int  # candidates per set (what a user generates before picking one)
    groups: int  # independent sets per prompt
    seed: int  # candidate k of prompt p has seed `seed + k`, the same for every prompt
    num_inference_steps: int
    guidance_scale: float
    adherence: float  # mean over all candidates
    random_pick: float  # one seeded random candidate per set
    random_pick_sd: float  # spread of `random_pick` between draws (its expectation is `adherence`)
    best_possible: float  # sets with at least one matching candidate
    top1: dict[str, float] = field(default_factory=dict)  # scorer -> adherence of its top-1
    control: dict[str, float] = field(default_factory=dict)  # scorer -> top-1 with wrong-prompt scores
    per_prompt: dict[str, float] = field(default_factory=dict)  # prompt -> mean adherence
    shape_ok: float = 0.0  # candidates whose shape alone matches
    color_ok: float = 0.0  # candidates whose colour alone matches
    seconds: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """The figures as a small text table."""
        sets = f"{len(shapes.PROMPTS)} prompts x {self.groups} sets of {self.n} candidates"
        lines = [
            f"toy world {self.model}",
            f"{sets}, {self.num_inference_steps} DDIM steps, guidance {self.guidance_scale:g}, seeds {self.seed}..",
            f"{'prompt adherence (pixel checker)':<40}",
            f"  {'mean of all candidates':<36}{self.adherence:6.3f}   (shape {self.shape_ok:.3f}, colour {self.color_ok:.3f})",
            f"  {'random pick':<36}{self.random_pick:6.3f}   (+/- {self.random_pick_sd:.3f} between draws)",
        ]
        for name, v in self.top1.items():
            lines.append(f"  {'top-1 after rerank, ' + name:<36}{v:6.3f}   ({v - self.adherence:+.3f} vs mean)")
        for name, v in self.control.items():
            lines.append(f"  {'control: wrong-prompt scores, ' + name:<36}{v:6.3f}   ({v - self.adherence:+.3f} vs mean)")
        lines.append(f"  {'best possible (any candidate matches)':<36}{self.best_possible:6.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def wrong_prompt(prompt: str) -> str:
    """The negative control's prompt: the next shape and the next colour, so neither word is shared."""
    shape, color = shapes.parse_prompt(prompt)
    colors = tuple(shapes.COLORS)
    return f"a {colors[(colors.index(color) + 1) % len(colors)]} {shapes.SHAPES[(shapes.SHAPES.index(shape) + 1) % len(shapes.SHAPES)]}"


def top1_adherence(scored, ok: np.ndarray, n: int) -> float:
    """Adherence of the candidates that `rank` puts first, in sets of `n` consecutive scored candidates
    (one prompt per set; seeds are distinct within a set)."""
    from sdkit.ranking import rank

    picked = []
    for a in range(0, len(scored), n):
        best = rank(scored[a:a + n])[0].candidate
        picked.append(ok[a + [c.seed for c in scored[a:a + n]].index(best.seed)])
    return float(np.mean(picked))


def evaluate(
    world: str | Path | None = None,
    *,
    n: int = 8,
    groups: int = 8,
    seed: int = 0,
    num_inference_steps: int = 20,
    guidance_scale: float = 2.0,
    scorers=("torch", "flax"),
    pipe=None,
    threads: int | None = 1,
    log=print,
) -> ToyQuality:
    """Generate, check and rerank in the toy world; see the module docstring.

    Args:
        world: a toy world directory (`toy_world_path(...)`); None builds or loads the "ci" world.
        n: candidates per set; groups: sets per prompt (n * groups seeds per prompt in all).
        seed, num_inference_steps, guidance_scale: as in `sdkit.generate`.
        scorers: CLIP backends for `sdkit.scoring.scorers.load_scorer`, or (name, scorer) pairs.
        pipe: an already loaded pipeline of this world (skips loading).
        threads: torch CPU threads while it runs (restored after); None keeps the current setting.
            One, because the per-sample UNet calls are tiny: with other jobs on a 2-core machine,
            2 threads generated 24 images in 748 s against 13-18 s with 1 (measured).
    """
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _evaluate(world, n=n, groups=groups, seed=seed, num_inference_steps=num_inference_steps,
                         guidance_scale=guidance_scale, scorers=scorers, pipe=pipe, log=log)
    finally:
        torch.set_num_threads(before)


def _evaluate(world, *, n, groups, seed, num_inference_steps, guidance_scale, scorers, pipe, log) -> ToyQuality:
    from sdkit.generation import generate
    from sdkit.load.pipeline import load_pipeline
    from sdkit.ranking import score_candidates
    from sdkit.scoring.scorers import load_scorer
    from sdkit.toy.world import toy_world_path

    if n < 1 or groups < 1:
        raise ValueError(f"n={n} and groups={groups} must both be >= 1")
    world = Path(world) if world is not None else toy_world_path("ci", log=log)
    times = {}
    t = time.perf_counter()
    pipe = pipe or load_pipeline(str(world / "pipeline"), device="cpu", dtype="fp32", safety_checker=False)
    run = generate(pipe, list(shapes.PROMPTS), n=n * groups, seed=seed, num_inference_steps=num_inference_steps,
                   guidance_scale=guidance_scale, progress=False)
    candidates = run.candidates
    times["generate_s"] = time.perf_counter() - t
    if log:
        log(f"  generated {len(candidates)} images in {times['generate_s']:.0f}s")

    checks = [shapes.check(np.asarray(c.image)) for c in candidates]
    ok = np.array([ch.matches(c.prompt) for ch, c in zip(checks, candidates)])
    want = [shapes.parse_prompt(c.prompt) for c in candidates]
    shape_ok = float(np.mean([ch.shape == w[0] for ch, w in zip(checks, want)]))
    color_ok = float(np.mean([ch.color == w[1] for ch, w in zip(checks, want)]))
    sets = ok.reshape(-1, n)  # candidates come prompt by prompt, seed by seed
    rng = np.random.default_rng(seed)
    random_pick = float(sets[np.arange(len(sets)), rng.integers(n, size=len(sets))].mean())
    p = sets.mean(axis=1)
    random_sd = float(np.sqrt((p * (1 - p)).sum()) / len(sets))

    top1, control = {}, {}
    # The negative control: each image scored against a prompt it was not made for.
    wrong = [dataclasses.replace(c, prompt=wrong_prompt(c.prompt)) for c in candidates]
    for backend in scorers:
        name, scorer = backend if isinstance(backend, tuple) else (backend, None)
        t = time.perf_counter()
        scorer = scorer or load_scorer(name, model=str(world / "clip"))
        top1[name] = top1_adherence(score_candidates(candidates, scorer), ok, n)
        control[name] = top1_adherence(score_candidates(wrong, scorer), ok, n)
        times[f"score_{name}_s"] = time.perf_counter() - t

    per_prompt = {prompt: float(ok[i * n * groups:(i + 1) * n * groups].mean()) for i, prompt in enumerate(shapes.PROMPTS)}
    return ToyQuality(
        model=str(world), n=n, groups=groups, seed=seed, num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale, adherence=float(ok.mean()), random_pick=random_pick, random_pick_sd=random_sd,
        best_possible=float(sets.any(axis=1).mean()), top1=top1, control=control, per_prompt=per_prompt,
        shape_ok=shape_ok, color_ok=color_ok, seconds={k: round(v, 1) for k, v in times.items()},
    )
