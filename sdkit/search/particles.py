"""particle_resampling (FK steering, Singhal et al. 2025): the particles of a stochastic sampler are resampled by
how much their x0 previews' scores rose, so compute flows to the promising ones; each finished image records its
`Lineage`, which `sdkit.search.replay` follows to make it again."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from sdkit.checks import is_int
from sdkit.load.invariance import has_rows
from sdkit.load.rows import Arithmetic, runs
from sdkit.results import Lineage, Run
from sdkit.search.family import counting, open_search, previewer_label

STOCHASTIC = ("EulerAncestralDiscreteScheduler", "DDPMScheduler")  # and DDIM with eta > 0


def default_resampling(num_inference_steps: int) -> tuple[int, ...]:
    """particle_resampling's default: resample after every 10% of the steps (20 steps: after 2, 4, ..., 18). Chosen
    with lambda_=0.3 on bench/particles.py's tuning sets; held-out figures in bench/results/particles.md."""
    if not is_int(num_inference_steps) or num_inference_steps < 2:
        return (1,)
    every = max(1, round(num_inference_steps / 10))
    return tuple(range(every, num_inference_steps, every))


def check(n, num_inference_steps, strength=None, *, resample_at=None, lambda_=0.3, edit=None, **_) -> tuple[int, ...]:
    """The resampling steps (default filled in), or a ValueError naming the bad setting."""
    if not is_int(n) or n < 2:
        raise ValueError(f"n={n!r} particles per prompt: must be an integer >= 2 for resampling to choose")
    if not is_int(num_inference_steps) or num_inference_steps < 2:
        raise ValueError(f"num_inference_steps={num_inference_steps!r}: must be >= 2 to resample between steps")
    if strength is not None or edit is not None:
        raise ValueError("particle_resampling is for text-to-image: a particle's image is remade from its lineage "
                         "(sdkit.regenerate), which edits cannot replay; use successive_halving for edits")
    resample_at = default_resampling(num_inference_steps) if resample_at is None else tuple(resample_at)
    if not resample_at or not all(is_int(s) for s in resample_at) or list(resample_at) != sorted(set(resample_at)) \
            or not (1 <= resample_at[0] and resample_at[-1] < num_inference_steps):
        raise ValueError(f"resample_at={list(resample_at)}: increasing steps from 1 to num_inference_steps - 1 = "
                         f"{num_inference_steps - 1}")
    if isinstance(lambda_, bool) or not isinstance(lambda_, (int, float)) or not 0 <= lambda_ < float("inf"):
        raise ValueError(f"lambda_={lambda_!r}: the potential's sharpness, a number >= 0 (0 resamples uniformly)")
    return resample_at


def check_pipeline(pipe, pipe_kwargs: dict | None) -> None:
    """A stochastic sampler (copied particles must part ways) on a batch-invariant pipeline (lineage replay)."""
    name, eta = type(pipe.scheduler).__name__, float((pipe_kwargs or {}).get("eta", 0.0))
    if name not in STOCHASTIC and not (name == "DDIMScheduler" and eta > 0):
        raise ValueError(f"particle_resampling needs a stochastic sampler, so copied particles part ways; this "
                         f"pipeline's is {name}" + (" with eta=0" if name == "DDIMScheduler" else "") +
                         ": load_pipeline(..., scheduler='Euler a'), or DDIM with pipe_kwargs={'eta': 1.0}")
    if not has_rows(pipe):
        raise ValueError("particle_resampling records where each particle ran, to replay its lineage, which needs "
                         "sdkit's row wrappers: a pipeline from load_pipeline, or "
                         "sdkit.load.invariance.install(pipe, batch_invariant=...)")


def resample(weights: np.ndarray, rng) -> list[int]:
    """Each row's parent: multinomial draws by weight, with every drawn row keeping its own place (fewer copies,
    the same multiset of particles)."""
    n = len(weights)
    counts = np.bincount(rng.choice(n, size=n, p=weights / weights.sum()), minlength=n)
    parents = list(range(n))
    spare = [r for r in range(n) if counts[r] == 0]
    for r in range(n):
        for _ in range(counts[r] - 1):
            parents[spare.pop()] = r
    return parents


def _followed(hops, by_row: dict, row: int, n: int, seeds: list[int], steps: int) -> dict:
    """A particle's arithmetic: at each UNet call (one a step for these samplers), the row and batch size of the
    ancestor it was then; its own decode."""
    prompt_rows = row - row % n
    at = [prompt_rows + seeds.index(seed) for _, seed in hops]  # the row each hop's particle lived in
    starts = [step for step, _ in hops]
    calls = []
    for call in range(steps):
        ancestor = at[max(k for k, start in enumerate(starts) if start <= call)]
        calls.append(by_row[ancestor].at(call))
    own = by_row[row]
    return Arithmetic(runs(calls), own.decode, own.device, own.software).to_json()


def particle_resampling(pipe, prompt: str | Sequence[str], scorer: Any = "flax", *, n: int = 8,
                        resample_at: Sequence[int] | None = None, lambda_: float = 0.3, num_inference_steps: int = 20,
                        previewer=None, batch_size: int | None = None, **kwargs) -> Run:
    """N particles per prompt through a stochastic sampler ("Euler a"); after each step in `resample_at` every
    particle's x0 preview is scored against its prompt and the particles are resampled with weights
    exp(lambda_ * (score - its score at the last resampling)), FK steering's difference potential. All N finish
    and are ranked by their final score; at best-of-N's UNet cost, plus the previews.

    A resampled particle continues from its parent's latent with its own seed's noise, so its image is not its
    seed's plain image: `extra["search"]["lineage"]` lists [step, seed] from the root (`Lineage.of(candidate)`),
    and `sdkit.regenerate` replays it (one row denoising at a time, bit for bit).
    """
    from sdkit.search.previews import after_steps, capture_previews

    resample_at = check(n, num_inference_steps, resample_at=resample_at, lambda_=lambda_, edit=kwargs.get("edit"))
    check_pipeline(pipe, kwargs.get("pipe_kwargs"))
    if batch_size is not None:
        raise ValueError(f"batch_size={batch_size!r}: particle_resampling moves particles between rows of one batch "
                         "of all prompts' particles; leave batch_size out")
    settings = {"n": n, "resample_at": list(resample_at), "lambda_": lambda_, "previewer": previewer_label(previewer)}
    if "eta" in (kwargs.get("pipe_kwargs") or {}):  # DDIM's noise: replay needs it
        settings["eta"] = float(kwargs["pipe_kwargs"]["eta"])
    s = open_search("particle_resampling", pipe, prompt, scorer, n=n, previewer=previewer, settings=settings, **kwargs)
    rows = len(s.prompts) * n
    lineage = [[(0, s.seeds[r % n])] for r in range(rows)]
    last = np.zeros(rows)  # each particle's score at the last resampling (its parent's, after a copy)
    plan: dict[int, list[int]] = {}

    def decide(record):  # capture_previews' hook: before loop position i steps, score and choose parents
        step = record.step + 1
        score = np.array([c.score for c in s.look(record.x0, range(rows))], dtype=np.float64)
        parents = []
        for j in range(len(s.prompts)):
            logw = lambda_ * (score[j * n:(j + 1) * n] - last[j * n:(j + 1) * n])
            rng = np.random.default_rng([s.base, j, step])
            parents += [j * n + p for p in resample(np.exp(logw - logw.max()), rng)]
        before = list(lineage)
        for r, p in enumerate(parents):
            if p != r:
                lineage[r] = before[p] + [(step, s.seeds[r % n])]
        last[:] = score[parents]
        plan[record.step] = parents

    def copy(i, latents):
        parents = plan.pop(i, None)
        return latents if parents is None else latents[parents]

    def before_save(batch):
        by_row = {c.index: Arithmetic.from_json(c.arithmetic) for c in batch}
        for c in batch:
            c.extra["search"] = {**s.settings, "lineage": Lineage(tuple(lineage[c.index])).to_json()}
            c.arithmetic = _followed(lineage[c.index], by_row, c.index, n, s.seeds, num_inference_steps)
        return s.score(batch)

    with counting(s.pipe, s.compute), capture_previews(s.pipe, steps=[t - 1 for t in resample_at], on_step=decide), \
            after_steps(s.pipe, copy):
        run = s.make(n=n, seed=s.base, num_inference_steps=num_inference_steps, batch_size=rows,
                     before_save=before_save)
    return s.close(run, run.candidates)
