"""The benchmark harness, run in its smoke mode on the tiny models: structure, never timings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ~1 min: five benchmarks and four subprocesses, on tiny models

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ["overhead", "batching", "dtype", "scoring", "memory"]
# The targets of issue 7, as the harness must state them.
TARGETS = {
    ("overhead", "<= 1.01"), ("dtype", ">= 2.5"), ("dtype", ">= 0.5"), ("scoring", ">= 1"), ("memory", "<= 1.1"),
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # As `make bench` runs it: a script, from the repository root.
    p = subprocess.run([sys.executable, "bench/run.py", "--smoke", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((out / "latest.json").read_text()), (out / "latest.md").read_text(), p


def test_json_has_machine_and_every_benchmark(smoke):
    result, _, _ = smoke
    assert result["smoke"] is True
    m = result["machine"]
    for key in ("cpu", "cores", "torch_threads", "cpu_flags", "torch", "diffusers", "transformers", "jax", "flax", "commit"):
        assert m[key] not in (None, ""), key
    assert list(result["benchmarks"]) == BENCHMARKS
    for name, b in result["benchmarks"].items():
        assert b["title"] and b["setup"] and b["ratios"], name


def test_every_ratio_has_median_spread_and_its_samples(smoke):
    result, _, _ = smoke
    for name, b in result["benchmarks"].items():
        for r in b["ratios"]:
            assert r["n"] == len(r["samples"]) >= 1, (name, r["name"])
            assert r["min"] <= r["median"] <= r["max"], (name, r["name"])
            assert all(s > 0 for s in r["samples"]), (name, r["name"])
            if "target" in r:
                assert isinstance(r["met"], bool)


def test_issue_targets_are_all_checked(smoke):
    result, _, _ = smoke
    found = {(name, r["target"]) for name, b in result["benchmarks"].items() for r in b["ratios"] if "target" in r}
    assert found == TARGETS


def test_overhead_compares_identical_images(smoke):
    result, _, _ = smoke
    data = result["benchmarks"]["overhead"]["data"]
    assert data["big"]["identical"] and data["tiny"]["identical"]


def test_dtype_reports_correctness_next_to_speed(smoke):
    result, _, _ = smoke
    data = result["benchmarks"]["dtype"]["data"]
    assert data["flops"] > 0 and len(data["psnr"]) == 2
    assert data["rel_error"]["diffusers default (fp32)"] == 0.0  # the reference against itself
    assert all(0 <= e < 0.5 for e in data["rel_error"].values())
    by_op = data["seconds_by_op"]  # where a step's time goes, for the fp32 reference and sdkit's default
    assert set(by_op) == {"diffusers default (fp32)", "sdkit default"}
    for seconds in by_op.values():
        assert set(seconds) == {"attention", "convolution", "linear layers", "everything else"}
        assert seconds["convolution"] > 0 and seconds["linear layers"] > 0 and seconds["attention"] > 0


def test_memory_runs_in_subprocesses(smoke):
    result, _, _ = smoke
    runs = result["benchmarks"]["memory"]["data"]["runs"]
    assert sorted(int(n) for n in runs) == [2, 4]
    assert all(r["peak_mb"] >= r["after_load_mb"] > 50 for rs in runs.values() for r in rs)


def test_markdown_has_the_ratio_table_and_a_section_per_benchmark(smoke):
    result, md, p = smoke
    assert md.startswith("# sdkit benchmarks (smoke run")
    assert "| measure | ratio of | median | spread (min–max) |" in md
    n_ratios = sum(len(b["ratios"]) for b in result["benchmarks"].values())
    table = md.split("## Ratios and targets")[1].split("\n## ")[0]
    assert table.count("\n| ") == n_ratios + 1  # header + one row per ratio
    for b in result["benchmarks"].values():
        assert f"## {b['title']}" in md
    assert result["machine"]["cpu"] in md
    assert p.stdout.strip().startswith("# sdkit benchmarks")  # the table is also printed


def test_bad_benchmark_name_is_refused_before_any_work(tmp_path):
    p = subprocess.run([sys.executable, "bench/run.py", "--smoke", "--only", "overhead,speed", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--only speed" in p.stderr and "overhead,batching,dtype,scoring,memory" in p.stderr
    assert not (tmp_path / "latest.json").exists()


def test_readme_table_is_replaced_between_its_markers(tmp_path):
    from bench import report

    result = {"machine": {"cpu": "CPU-X", "cores": 2, "torch_threads": 2, "cpu_flags": "avx2", "loadavg": "0 0 0",
                          "python": "3", "torch": "t", "diffusers": "d", "transformers": "tr", "jax": "j", "flax": "f",
                          "commit": "abc", "date": "today"},
              "benchmarks": {"x": {"ratios": [report.ratio("speed-up", [2.0, 3.0, 2.5], what="a / b", target=(">=", 2.5))]}}}
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{report.BEGIN}\nold table\n{report.END}\n\nafter\n")
    report.update_readme(readme, result)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# title\n") and text.endswith(f"{report.END}\n\nafter\n")
    assert "CPU-X" in text and "| speed-up | a / b | 2.5× | 2–3 |" in text and "| >= 2.5 | yes |" in text
    report.update_readme(readme, result)  # idempotent: the markers stay
    assert readme.read_text() == text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        report.update_readme(readme, result)
