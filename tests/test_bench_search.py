"""bench/search.py: its replay of the strategies on recorded scores, and the whole script on a small pool (whose
real runs must pick and spend exactly what the replay says, or the script fails)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import search as bench  # noqa: E402


def fake_pool(final, preview, drafts=None):
    """One prompt, one group: arrays shaped [prompt, group, candidate(, step)]."""
    pool = {"final": np.array(final, float)[None, None], "ok": np.ones((1, 1, len(final)), bool),
            "preview_vae": np.array(preview, float)[None, None]}
    if drafts is not None:
        pool["draft3"] = np.array(drafts, float)[None, None]
    return pool


def test_replay_prunes_on_previews_and_picks_by_final_score():
    # 4 candidates, 3 steps. After step 1 the previews keep 2 and 3; after step 2 only 3; candidate 0 has the best
    # final score but was pruned at step 1, so halving picks 3 and best-of-4 picks 0.
    final = [9, 1, 2, 5]
    preview = [[0, 0, 0], [1, 0, 0], [2, 1, 0], [3, 2, 0]]
    picks, cost = bench.replay("successive_halving", {"prune_at": [1, 2], "keep": [2, 1]}, 4, fake_pool(final, preview), 3)
    assert picks[0, 0] == 3
    assert cost == {"unet_evaluations": 4 * 1 + 2 * 1 + 1 * 1, "preview_decodes": 4 + 2, "scored_images": 4 + 2 + 1}
    picks, cost = bench.replay("best_of_n", {}, 4, fake_pool(final, preview), 3)
    assert picks[0, 0] == 0 and cost["unet_evaluations"] == 12
    # Only the first n seeds of a set take part.
    picks, _ = bench.replay("best_of_n", {}, 2, fake_pool([1, 2, 9, 9], preview), 3)
    assert picks[0, 0] == 1


def test_replay_breaks_ties_by_seed_as_rank_does():
    from sdkit.ranking import rank
    from sdkit.results import Candidate, Scores

    final = [3.0, 7.0, 7.0, 1.0]
    picks, _ = bench.replay("best_of_n", {}, 4, fake_pool(final, [[0]] * 4), 1)
    cands = [Candidate(image=None, prompt="p", seed=s) for s in range(4)]
    scores = Scores(clip_score=np.array(final), logits=np.array(final), scorer="x")
    assert picks[0, 0] == rank(cands, scores)[0].candidate.seed == 1


def test_replay_draft_then_finish_keeps_the_best_drafts():
    final, drafts = [9, 1, 2, 5], [0, 3, 1, 2]
    picks, cost = bench.replay("draft_then_finish", {"draft_steps": 3, "keep": 2}, 4,
                               fake_pool(final, [[0]] * 4, drafts), 20)
    assert picks[0, 0] == 3  # drafts keep 1 and 3; of those, 3 finishes best
    assert cost == {"unet_evaluations": 4 * 3 + 2 * 20, "preview_decodes": 0, "scored_images": 6}


def test_groups_and_pareto():
    assert bench.groups_of("0-3,12-13,7") == [0, 1, 2, 3, 7, 12, 13]
    rows = [{"unet_evaluations": 10, "top1": 0.5}, {"unet_evaluations": 20, "top1": 0.4},
            {"unet_evaluations": 30, "top1": 0.7}, {"unet_evaluations": 5, "top1": 0.1}]
    assert [r["unet_evaluations"] for r in bench.pareto(rows)] == [5, 10, 30]


def test_interval_covers_the_mean_and_narrows_with_more_sets():
    rng = np.random.default_rng(0)
    small = bench.interval(np.array([0, 1] * 10, float), rng)
    large = bench.interval(np.array([0, 1] * 500, float), rng)
    assert small[0] < 0.5 < small[1] and large[0] < 0.5 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 3


@pytest.mark.slow
def test_small_run_writes_results_that_match_real_runs(tmp_path):
    out = tmp_path / "s"
    env = {**__import__("os").environ, "SDKIT_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "bench/search.py", "--groups", "3", "--tune-groups", "0", "--pool", "8",
                        "--steps", "4", "--draft-steps", "2", "--repeats", "1", "--workers", "1", "--previewer", "none",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["report_sets"] == 24 and res["settings"]["tune_groups"] == [0]
    assert res["real"] and all(c["picks_equal_replay"] and c["unet_evaluations_equal_replay"] for c in res["real"].values())
    assert [r["step"] for r in res["spearman"]["vae"]] == [1, 2, 3, 4]
    names = [t["target"] for t in res["targets"]]
    assert any("40%" in n for n in names) and any("+0.05" in n for n in names)
    b8 = next(r for r in res["table"] if r["name"] == "best-of-8")
    assert b8["unet_evaluations"] == 32 and b8["diff"] == 0
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "## Targets" in out.with_suffix(".md").read_text()
    # The pool is cached per group: a second run with one more group makes only that one.
    p = subprocess.run([sys.executable, "bench/search.py", "--groups", "4", "--tune-groups", "0", "--pool", "8",
                        "--steps", "4", "--draft-steps", "2", "--repeats", "1", "--workers", "1", "--previewer", "none",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "pool: making groups [3]" in p.stderr
