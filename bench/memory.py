"""Memory: peak RSS of a whole `generate` run for few vs many candidates, at a fixed batch size.

Each run is a fresh subprocess, so its peak RSS (`ru_maxrss`) is its own. The
tiny UNet keeps the runs short while the images are full size (512x512), which
is what would pile up if candidates were kept as full-size float tensors
instead of streaming to disk (sdkit keeps one 8-bit PIL image per candidate).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from .report import ratio, table
from .timing import Stat

ROOT = Path(__file__).resolve().parent.parent


def child(n: int, batch_size: int, size: int, steps: int, out: str) -> dict:
    """Runs in the subprocess: one generate call, then its peak RSS."""
    import warnings

    warnings.filterwarnings("ignore")
    from sdkit import generate, load_pipeline

    from .models import tiny_path

    pipe = load_pipeline(str(tiny_path()), device="cpu")
    before = peak_mb()
    run = generate(pipe, "a red circle", n=n, seed=0, num_inference_steps=steps, height=size, width=size,
                   batch_size=batch_size, output_dir=out, progress=False)
    assert len(run) == n and all(Path(c.path).exists() for c in run), "not every candidate was saved"
    return {"n": n, "peak_mb": peak_mb(), "after_load_mb": before}


def peak_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent
    across fork and exec, so a child of a 10 GB benchmark process would report 10 GB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def peak_rss(n: int, cfg) -> dict:
    with tempfile.TemporaryDirectory(prefix="sdkit-bench-mem-") as out:
        # One thread: memory does not depend on it, and the tiny model on two threads of a busy
        # machine is 10-80x slower (bench/README.md).
        env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
        args = [sys.executable, "-m", "bench.memory", str(n), str(cfg.memory_batch), str(cfg.memory_size),
                str(cfg.memory_steps), out]
        p = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"memory child n={n} failed:\n{p.stderr[-3000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])


def run(cfg) -> dict:
    few, many = cfg.memory_ns
    reps = cfg.memory_reps
    results = {few: [], many: []}
    for _ in range(reps):
        for n in (few, many):
            results[n].append(peak_rss(n, cfg))
    peaks = {n: [r["peak_mb"] for r in rs] for n, rs in results.items()}
    r = [b / a for a, b in zip(peaks[few], peaks[many])]
    per_extra = (Stat.of(peaks[many]).median - Stat.of(peaks[few]).median) / (many - few)
    return {
        "title": f"5. Memory: peak RSS for {few} vs {many} candidates",
        "setup": (f"tiny UNet, {cfg.memory_size}×{cfg.memory_size} images, {cfg.memory_steps} steps, batch size "
                  f"{cfg.memory_batch}, saving to disk (output_dir); each run a fresh subprocess (1 thread), {reps} runs each; "
                  f"peak RSS = VmHWM."),
        "ratios": [ratio(f"peak RSS, {many} vs {few} candidates", r, what=f"peak RSS n={many} / n={few}",
                         target=("<=", 1.1))],
        "tables": [table(["candidates", "peak RSS (MB), runs", "RSS after loading (MB)"],
                         [[n, ", ".join(f"{p:.0f}" for p in peaks[n]),
                           ", ".join(f"{x['after_load_mb']:.0f}" for x in results[n])] for n in (few, many)]
                         + [["growth per extra candidate (MB)", f"{per_extra:.2f}", "–"]])],
        "data": {"runs": results, "growth_mb_per_candidate": per_extra},
    }


if __name__ == "__main__":
    n, bs, size, steps, out = sys.argv[1:6]
    print(json.dumps(child(int(n), int(bs), int(size), int(steps), out)))
