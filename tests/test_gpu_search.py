"""bench/gpu_search.py: the settings chosen on the pool's tuning sets, run for real on seed bases nobody tuned on."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import gpu_search  # noqa: E402
import search as bench_search  # noqa: E402
from gpu_model import Costs, seconds  # noqa: E402

HALVING = {"strategy": "successive_halving", "n": 8, "prune_at": [1], "keep": [2], "previewer": "vae"}
DRAFT = {"strategy": "draft_then_finish", "n": 8, "draft_steps": 2, "keep": 2}


def test_a_pool_row_becomes_the_runner_job_of_the_same_search():
    from bench import particles as runner

    common = dict(scheduler="DDIM", group=3, steps=20, guidance=2.0, seed=7)
    tiny = gpu_search.job_for({**HALVING, "previewer": "tiny", "prune_at": (2, 8), "keep": (8, 2)}, **common)
    assert tiny == {"strategy": "successive_halving", "n": 8, "prune_at": [2, 8], "keep": [8, 2], "previewer": "tiny",
                    **common}
    assert "previewer" not in gpu_search.job_for(HALVING, **common)  # the VAE: the runner's default, unlabelled
    assert gpu_search.job_for(DRAFT, **common) == {"strategy": "draft_then_finish", "n": 8, "draft_steps": 2, "keep": 2,
                                                   **common}
    assert runner.label_of(tiny) == "successive-halving n=8 prune_at=(2, 8) keep=(8, 2) (DDIM), tiny previewer"


@pytest.mark.slow
def test_chosen_settings_run_for_real_on_a_fresh_base_cost_what_the_replay_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("SDKIT_CACHE", str(tmp_path / "cache"))  # the runner's cache: fresh, inherited by its workers
    args = bench_search.parse_args(["--steps", "4", "--draft-steps", "2", "--workers", "1"])
    costs = Costs()
    fresh = gpu_search.on_fresh_bases({"a:match": HALVING, "b:beat": DRAFT, "c:beat": dict(HALVING)}, args, costs,
                                      bases=[1000], groups=1, workers=1)
    assert fresh["sets"] == 12 and fresh["bases"] == [1000]
    rows = {r["name"]: r for r in fresh["rows"]}
    assert list(rows) == ["best-of-8", bench_search.name_of(HALVING), bench_search.name_of(DRAFT)]  # each once
    b8 = rows["best-of-8"]
    assert b8["diff"] == 0 and b8["gpu_ratio"] == 1 and b8["by_base"] == [{"base": 1000, "top1": b8["top1"], "diff": 0}]
    for cfg in (HALVING, DRAFT):
        r = rows[bench_search.name_of(cfg)]
        counted = bench_search.cost(cfg["strategy"], cfg, 8, 4)  # what the pool's replay charges
        assert r["unet_evaluations"] == counted["unet_evaluations"] and r["preview_decodes"] == counted["preview_decodes"]
        modelled = seconds(cfg, steps=4, prompts=12, costs=costs) / seconds({"strategy": "best_of_n", "n": 8}, steps=4,
                                                                            prompts=12, costs=costs)
        assert r["gpu_ratio"] == pytest.approx(modelled, rel=1e-12)
        assert r["by_base"][0]["top1"] == r["top1"] and 0 <= r["top1"] <= 1


def test_the_particle_setting_to_confirm_is_fixed_by_its_rule():
    """The best n=8 row with the VAE previewer on particles.py's fresh bases (tiny-previewer and other-n rows are not
    candidates; ties go to fewer looks), at the most particles that fit best-of-8's modelled GPU time."""
    from bench import particles as runner

    def row(n, at, diff, **kw):
        return {"strategy": "particle_resampling", "n": n, "resample_at": at, "lambda_": 1.0, "diff": diff, **kw}

    every2, sparse = list(range(2, 20, 2)), [2, 5, 10]
    fresh = {"rows": [{"strategy": "best_of_n", "n": 8, "diff": 0.0}, row(8, every2, 0.07), row(8, sparse, 0.05),
                      row(8, sparse, 0.2, previewer="tiny"), row(6, sparse, 0.3)]}
    best, n = gpu_search.confirm_choice(fresh, 20)
    assert best["resample_at"] == every2 and n == runner.gpu_budget_n(20, every2)
    fresh["rows"].append(row(8, sparse, 0.07))  # a tie: the one with fewer looks
    best, n = gpu_search.confirm_choice(fresh, 20)
    assert best["resample_at"] == sparse and n == runner.gpu_budget_n(20, sparse) > runner.gpu_budget_n(20, every2)
