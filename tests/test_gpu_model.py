"""bench/gpu_model.py: the GPU cost model's arithmetic on a table of its own, and its agreement with the wall
times measured on the H200 for the runs it models (bench/results/gpu/search_gpu.json)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from gpu_model import TABLE, Costs, seconds  # noqa: E402


@pytest.fixture
def costs(tmp_path):
    """A table with round numbers: a UNet call costs 10 ms + 1 ms per candidate, a decode 2 ms per image, a
    score 1 ms per image (measured at 1, 2, 4, 8, 16, 32 and 1, 8, 32)."""
    unet = {str(n): {"s_per_call": {"median": (10 + n) / 1000}} for n in (1, 2, 4, 8, 16, 32)}
    per = {f"{k}_b{n}": {"median": n * v / 1000} for k, v in (("vae_decode", 2), ("tiny_decode", 0.5),
                                                                 ("flax_score", 1), ("torch_score", 1)) for n in (1, 8, 32)}
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"sections": {"unet_batch_curve": {**unet, "seconds": 1}, "preview_costs": per}}))
    return Costs(path, scoring="pil")


def test_scores_are_charged_as_sdkit_takes_them_on_a_gpu(costs, tmp_path):
    """By default a score costs what the tensor path measured (one size: every call up to it costs the same, a
    bigger one is split); `scoring="pil"` keeps the table's PIL curve; anything else is named."""
    check = tmp_path / "check.json"
    scorer = {"images": 64, "images_per_s": {"flax, tensor": {"median": 6400.0}, "torch, tensor": {"median": 3200.0}}}
    check.write_text(json.dumps({"sections": {"scorer": {"data": scorer}}}))
    table = tmp_path / "table.json"  # the fixture's
    tensor = Costs(table, check=check)
    assert tensor.score(1) == tensor.score(64) == pytest.approx(0.010)
    assert tensor.score(100) == pytest.approx(0.020) and tensor.score(100, "torch") == pytest.approx(0.040)
    assert costs.score(8) == pytest.approx(0.008)  # the PIL curve: 1 ms an image
    assert tensor.unet(8) == costs.unet(8) and tensor.decode(8) == costs.decode(8)
    # The shipped figures: 64 images at the Flax tensor path's measured rate on the H200.
    measured = json.loads(TABLE.with_name("gpu_check.json").read_text())["sections"]["scorer"]["data"]
    assert Costs().score(32) == pytest.approx(64 / measured["images_per_s"]["flax, tensor"]["median"])
    with pytest.raises(ValueError, match="scoring='PIL'"):
        Costs(table, scoring="PIL")
    # A check that also timed smaller tensor calls (gpu_check.py's `tensor_s_per_call`): the model interpolates.
    scorer["tensor_s_per_call"] = {"flax b1": {"median": 0.002}, "flax b8": {"median": 0.004},
                                   "torch b1": {"median": 0.003}}
    check.write_text(json.dumps({"sections": {"scorer": {"data": scorer}}}))
    curve = Costs(table, check=check)
    assert curve.score(1) == pytest.approx(0.002) and curve.score(8) == pytest.approx(0.004)
    assert curve.score(36) == pytest.approx(0.004 + (0.010 - 0.004) * 28 / 56)
    assert curve.score(1, "torch") == pytest.approx(0.003) and curve.score(64, "torch") == pytest.approx(0.020)


def test_calls_between_and_beyond_the_measured_sizes(costs):
    assert costs.unet(8) == pytest.approx(0.018)
    assert costs.unet(12, width=16) == pytest.approx(0.022)  # between 8 and 16: interpolated
    assert costs.unet(40, width=16) == pytest.approx(0.024 + 0.023 + 0.023)  # 14, 13, 13 candidates a call
    assert costs.unet(40, width=64) == pytest.approx(0.042 + 0.018)  # one call of 40: 32 + 8
    assert costs.decode(10) == pytest.approx(0.020) and costs.decode(10, "tiny") == pytest.approx(0.005)
    assert costs.unet(0) == 0 and costs.decode(0) == 0


def test_each_strategy_is_modelled_call_by_call(costs):
    steps = 4
    assert seconds({"strategy": "best_of_n", "n": 8}, steps=steps, prompts=2, costs=costs, width=16) == \
        pytest.approx(4 * 0.026 + 0.032 + 0.016)
    halving = {"strategy": "successive_halving", "n": 8, "prune_at": [1, 2], "keep": [4, 1]}
    # 16 candidates for step 1, previews of 16; 8 for step 2, previews of 8; 2 for steps 3 and 4; 2 finished
    want = 0.026 + 0.032 + 0.016 + 0.018 + 0.016 + 0.008 + 2 * 0.012 + 0.004 + 0.002
    assert seconds(halving, steps=steps, prompts=2, costs=costs, width=16) == pytest.approx(want)
    tiny = seconds({**halving, "previewer": "tiny"}, steps=steps, prompts=2, costs=costs, width=16)
    assert tiny == pytest.approx(want - 0.75 * (0.032 + 0.016))
    drafts = {"strategy": "draft_then_finish", "n": 8, "keep": 2, "draft_steps": 2}
    assert seconds(drafts, steps=steps, prompts=1, costs=costs, width=16) == pytest.approx(
        2 * 0.018 + 0.016 + 0.008 + 4 * 0.012 + 0.004 + 0.002)
    particles = {"strategy": "particle_resampling", "n": 4, "resample_at": [1, 3]}
    assert seconds(particles, steps=steps, prompts=1, costs=costs, width=16) == pytest.approx(
        4 * 0.014 + 2 * (0.008 + 0.004) + 0.008 + 0.004)
    with pytest.raises(ValueError, match="no cost model"):
        seconds({"strategy": "mystery", "n": 2}, steps=steps, costs=costs)


def test_the_model_agrees_with_the_measured_h200_runs():
    """Best-of-N batched was measured end to end on the H200: the model, built from per-call figures, must land
    within 10% of it (it leaves out text encoding and the scheduler). Those runs (sdkit 8e91909) scored PIL
    images, so the model charges PIL scores here."""
    measured = json.loads(TABLE.read_text())["sections"]["strategies"]
    c = Costs(scoring="pil")
    b8 = measured["best_of_n n=8 batched (GPU default, batch 8)"]["median_wall_s"]
    b32 = measured["best_of_n n=32 batched (batch 32)"]["median_wall_s"]
    assert seconds({"strategy": "best_of_n", "n": 8}, steps=20, costs=c, width=8) == pytest.approx(b8, rel=0.1)
    assert seconds({"strategy": "best_of_n", "n": 32}, steps=20, costs=c, width=32) == pytest.approx(b32, rel=0.1)


def test_verifier_searches_on_the_gpu_clock_are_sdkits_default_schedule(tmp_path):
    """bench/reward.py's GPU column models the search it ran (sdkit's default halving schedule, n=16), and
    `--render` rebuilds the tables from a results file alone, with the target judged per verifier."""
    import shutil

    import reward
    from sdkit.search.halving import default_schedule

    g = reward.gpu_figures(20)
    assert default_schedule(16, 20) == ((2, 10), (4, 1)) and (g["prune_at"], g["keep"]) == ([2, 10], [4, 1])
    b8 = seconds({"strategy": "best_of_n", "n": 8}, steps=20, prompts=12) / 12
    halving = seconds({"strategy": "successive_halving", "n": 16, "prune_at": [2, 10], "keep": [4, 1]}, steps=20,
                      prompts=12) / 12
    assert g["best_of_8_s"] == pytest.approx(b8) and g["ratio"] == pytest.approx(halving / b8) and g["ratio"] < 1
    out = tmp_path / "reward"
    shutil.copy(ROOT / "bench" / "results" / "reward.json", out.with_suffix(".json"))
    res = json.loads(out.with_suffix(".json").read_text())
    res["search"]["clip"]["search_vs_best"] = 0.05  # at the target's edge: met
    out.with_suffix(".json").write_text(json.dumps(res))
    assert reward.main(["--render", "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    assert f"**{g['ratio']:.2f}** of best-of-8's time" in md
    gpu = md.split("## On a GPU's clock")[1].split("\n## ")[0]
    assert "- clip: +0.050" in gpu and gpu.count("**met**") == 1 + (res["search"]["reward"]["search_vs_best"] >= 0.05)
    cheap = md.split("## The default schedule at n=8")[1]  # issue 24's first target: within the paired interval
    for name, f in res["cheap_search"].items():
        row = next(line for line in cheap.splitlines() if line.startswith(f"| {name} |"))
        assert row.split(" | ")[3] == ("**met**" if f["search_vs_best_ci"][1] >= 0 else "**not met**"), row
    assert json.loads(out.with_suffix(".json").read_text())["gpu"]["ratio"] == pytest.approx(g["ratio"])


def test_lanes_are_modelled_call_by_call_with_padding(costs):
    """The alternative sdkit did not build: fixed-width calls, candidate k in row k % lanes, no sharing between
    prompts; a call runs while any of its rows is live."""
    from gpu_model import lane_blocks

    assert lane_blocks(8, 8, 8) == 1 and lane_blocks(16, 16, 8) == 2 and lane_blocks(4, 4, 8) == 1
    assert lane_blocks(16, 1, 8) == pytest.approx(1)  # one survivor: one block
    # 4 survivors of 16 in two blocks of 8: a block is empty with probability C(8, 4) / C(16, 4) = 70 / 1820
    assert lane_blocks(16, 4, 8) == pytest.approx(2 * (1 - 70 / 1820))
    b8 = {"strategy": "best_of_n", "n": 8}
    # 2 prompts, each its own call of 8 rows (18 ms) at each of 4 steps; decodes of 8 rows each; scores as ever
    assert seconds(b8, steps=4, prompts=2, costs=costs, lanes=8) == pytest.approx(2 * 4 * 0.018 + 2 * 0.016 + 0.016)
    assert seconds({"strategy": "best_of_n", "n": 2}, steps=4, prompts=1, costs=costs, lanes=8) == \
        pytest.approx(4 * 0.018 + 0.016 + 0.002)  # 2 candidates padded to 8 rows
    halving = {"strategy": "successive_halving", "n": 16, "prune_at": [1], "keep": [1]}
    # step 1: two blocks; previews of both blocks; steps 2-4: the survivor's block; its final decode
    assert seconds(halving, steps=4, prompts=1, costs=costs, lanes=8) == pytest.approx(
        2 * 0.018 + 2 * 0.016 + 0.016 + 3 * 0.018 + 0.016 + 0.001)
    # Shapes (sdkit's way) run the one survivor alone: lanes cost more whenever a search prunes.
    assert seconds(halving, steps=4, prompts=1, costs=costs) < seconds(halving, steps=4, prompts=1, costs=costs, lanes=8)
