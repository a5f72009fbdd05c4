"""bench/particles.py: its summaries of real runs, and the whole script on one tuning and one held-out group."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import particles as bench  # noqa: E402


def result(group, won, strategy="best_of_n", n=8, seed=0, **kw):
    return {"strategy": strategy, "scheduler": "Euler a", "n": n, "seed": seed, "group": group, "won": won, "any": [True] * len(won),
            "mean": [0.5] * len(won), "copied": [0] * len(won), "unet_evaluations": n * 20.0, "preview_decodes": 0.0,
            "scored_images": float(n), "wall_s": 1.0, **kw}


def test_summarise_pools_the_groups_in_order_and_skips_incomplete_labels():
    rng = np.random.default_rng(0)
    rows = [result(0, [True, False]), result(1, [True, True]),
            result(0, [False, False], strategy="particle_resampling", resample_at=[2], lambda_=1.0)]
    out = bench.summarise(rows, [(0, 0), (0, 1)], rng)
    assert list(out) == ["best-of-8 (Euler a)"]  # the particles ran on group 0 only: not summarised
    b8 = out["best-of-8 (Euler a)"]
    assert b8["top1"] == 0.75 and b8["sets"] == 4 and list(b8["_won"]) == [1, 0, 1, 1]
    assert b8["ci"][0] <= 0.75 <= b8["ci"][1]


def test_summarise_keeps_seed_bases_apart():
    rng = np.random.default_rng(0)
    rows = [result(0, [True, True]), result(0, [False, False], seed=1000)]
    assert bench.summarise(rows, [(0, 0)], rng)["best-of-8 (Euler a)"]["top1"] == 1.0
    assert bench.summarise(rows, [(1000, 0)], rng)["best-of-8 (Euler a)"]["top1"] == 0.0
    assert list(bench.summarise(rows, [(0, 0), (1000, 0)], rng)["best-of-8 (Euler a)"]["_won"]) == [1, 1, 0, 0]


def test_the_gpu_budget_is_the_most_particles_within_best_of_8s_modelled_time():
    from bench.gpu_model import seconds

    at = list(range(2, 20, 2))
    n = bench.gpu_budget_n(20, at)
    cost = lambda k: seconds({"strategy": "particle_resampling", "n": k, "resample_at": at, "previewer": "tiny"},  # noqa: E731
                             steps=20, prompts=12)
    budget = seconds({"strategy": "best_of_n", "n": 8}, steps=20, prompts=12)
    assert cost(n) <= budget < cost(n + 1)
    assert bench.gpu_budget_n(20, [2]) >= n  # fewer looks: as many particles at least


@pytest.mark.slow
def test_small_run_writes_results_and_reuses_its_cache(tmp_path):
    out = tmp_path / "p"
    env = {**os.environ, "SDKIT_CACHE": str(tmp_path / "cache")}
    args = [sys.executable, "bench/particles.py", "--tune-groups", "0", "--report-groups", "1", "--steps", "4",
            "--lambdas", "1", "--schedules", "2", "--workers", "1", "--report-bases", "1000", "--base-groups", "1",
            "--out", str(out)]
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.with_suffix(".json").read_text())
    report = {r["label"]: r for r in res["report"]}
    b8 = report["best-of-8 (Euler a)"]
    assert b8["unet_evaluations"] == 8 * 4 and b8["diff"] == 0 and res["report_sets"] == 12
    fk = report["particles n=8 resample_at=(2,) lambda=1"]
    assert fk["unet_evaluations"] == 8 * 4 and fk["preview_decodes"] == 8 and fk["sets"] == 12
    assert fk["best_possible"] >= fk["top1"] and "## Verdict" in out.with_suffix(".md").read_text()
    assert {"best-of-4 (Euler a)", "best-of-16 (Euler a)", "best-of-8 (DDIM)"} <= set(report)
    # The fresh base: the same setting on seeds 1000 + k (group 0), paired with its own best-of-8, with the tiny
    # previewer at n=8 and at the most particles that fit best-of-8's modelled GPU time.
    fresh = {r["label"]: r for r in res["fresh"]["rows"]}
    n_gpu = res["fresh"]["gpu_budget_n"]
    assert res["fresh"]["sets"] == 12 and res["fresh"]["bases"] == [1000] and 2 <= n_gpu <= 8
    assert fresh["best-of-8 (Euler a)"]["diff"] == 0 and fresh["best-of-8 (Euler a)"]["by_base"][0]["diff"] == 0
    tiny = fresh["particles n=8 resample_at=(2,) lambda=1, tiny previewer"]
    assert tiny["previewer"] == "tiny" and tiny["preview_decodes"] == 8 and tiny["unet_evaluations"] == 8 * 4
    assert fresh[f"particles n={n_gpu} resample_at=(2,) lambda=1, tiny previewer"]["unet_evaluations"] == n_gpu * 4
    assert "seed bases nobody tuned on (1000" in out.with_suffix(".md").read_text()
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    # Everything comes from the cache the second time: 2 tuning runs, 7 held-out runs, 7 on the fresh base.
    assert p.returncode == 0 and "2 of 2 runs cached" in p.stderr and "7 of 7 runs cached" in p.stderr, p.stderr[-2000:]
