"""best_of_n: the baseline every search is measured against."""

from __future__ import annotations

from typing import Any, Sequence

from sdkit.results import Run
from sdkit.search.family import counting, open_search


def best_of_n(pipe, prompt: str | Sequence[str], scorer: Any = "flax", *, n: int = 8, num_inference_steps: int = 30,
              **kwargs) -> Run:
    """N candidates per prompt to the last step, scored as each batch is decoded (and saved with its score), and
    ranked: what `generate` followed by `rerank` gives, as a search."""
    s = open_search("best_of_n", pipe, prompt, scorer, n=n, settings={"n": n}, **kwargs)

    def before_save(batch):
        for c in batch:
            c.extra["search"] = dict(s.settings)
        return s.score(batch)

    with counting(s.pipe, s.compute):
        run = s.make(n=n, seed=s.base, num_inference_steps=num_inference_steps, before_save=before_save)
    return s.close(run, run.candidates)
