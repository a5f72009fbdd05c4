"""Verifier hacking in the toy world (the toy version of Ma et al. 2025's table): rank by one toy CLIP, measure the
other.

    make bench-hacking                                  # = .venv/bin/python bench/hacking.py
    .venv/bin/python bench/hacking.py --bases 5000000 --groups 1 --out /tmp/h      # a smoke run, ~1 min

Two verifiers: A, the shipped world's CLIP (`<world>/clip`, the one `sdkit:toy` ranks by), and B, the same recipe
trained from another seed (`sdkit.toy.second_clip`, built once and cached). The candidates are bench/held_out.py's,
shared with bench/reward.py: per seed base, the 12 prompts from 8 consecutive seeds a set, 20 DDIM steps, guidance 2,
bench/search.py's batch-invariant pipeline, judged by the pixel checker (`sdkit.toy.shapes.check`).
Every candidate is scored by A and by B (`load_scorer`, Flax), and by their 1:1 ensemble (`sdkit.scoring.ensemble`'s
z-score and rank combines, within each set). Each selector picks one candidate per set: A, B, the two ensembles,
random (its expectation: the set's mean) and the checker's oracle (its expectation over the candidates that pass,
all of them when none does). Reported per base and pooled: top-1 adherence and the pick's score under A and under
B as a z-score within its set (so the two scales compare), with 95% bootstrap intervals over sets, paired for
differences. Writes bench/results/hacking.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `sdkit` importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import held_out  # noqa: E402  (the candidates, shared with bench/reward.py)
from held_out import N  # noqa: E402

from bench.report import write_results  # noqa: E402
from search import interval  # noqa: E402  (bench/search.py's bootstrap, so the two benchmarks' intervals agree)

ROOT = Path(__file__).resolve().parent.parent
SELECTORS = ("A", "B", "ensemble_zscore", "ensemble_rank", "random", "oracle")


def score(data, scorers: dict, clock: dict) -> dict[str, np.ndarray]:
    """Logits (sets, 8) of A and B, and of their two ensembles combined within each set."""
    from sdkit.scoring.ensemble import combine_scores

    out = held_out.score(data, scorers, clock)
    for combine in ("zscore", "rank"):
        out[f"ensemble_{combine}"] = combine_scores(out, held_out.set_labels(data), {"A": 1.0, "B": 1.0},
                                                    combine).astype(np.float64)
    return {k: v.reshape(-1, N) for k, v in out.items()}


def zscores(x: np.ndarray) -> np.ndarray:
    """Each row (a set) as z-scores, as `sdkit.scoring.ensemble` scales them (a set of equal scores: 0)."""
    from sdkit.scoring.ensemble import scaled

    return np.stack([scaled(row, "zscore") for row in x])


def picks(logits: dict, ok: np.ndarray) -> dict[str, np.ndarray]:
    """Per selector, the weight of each candidate of each set (sets, 8): one-hot for a ranking, spread for the
    random pick and the oracle, whose figures are then exact expectations."""
    rows = np.arange(len(ok))
    out = {}
    for k in ("A", "B", "ensemble_zscore", "ensemble_rank"):
        w = np.zeros(ok.shape)
        w[rows, np.argmax(logits[k], axis=1)] = 1  # argmax takes the first of equal logits: the lowest seed, as rank
        out[k] = w
    out["random"] = np.full(ok.shape, 1 / ok.shape[1])
    passing = np.where(ok.any(axis=1, keepdims=True), ok, True).astype(float)
    out["oracle"] = passing / passing.sum(axis=1, keepdims=True)
    return out


def figures(logits: dict, ok: np.ndarray, rng) -> dict:
    """One group of sets: per selector top-1 and the pick's z-score under A and B, with intervals; the paired
    differences that say whether ranking by one verifier costs the other; how often A and B agree."""
    from scipy.stats import spearmanr

    z = {"A": zscores(logits["A"]), "B": zscores(logits["B"])}
    per = {}  # selector -> per-set values
    for k, w in picks(logits, ok).items():
        per[k] = {"top1": (w * ok).sum(axis=1), "z_A": (w * z["A"]).sum(axis=1), "z_B": (w * z["B"]).sum(axis=1)}
    out = {"sets": len(ok), "mean_adherence": float(ok.mean()),
           "same_pick_A_B": float((np.argmax(logits["A"], 1) == np.argmax(logits["B"], 1)).mean()),
           "spearman_A_B": float(np.nanmean([spearmanr(a, b).statistic for a, b in zip(logits["A"], logits["B"])])),
           "selectors": {k: {m: {"mean": float(v.mean()), "ci": interval(v, rng)} for m, v in d.items()}
                         for k, d in per.items()}}

    def diff(a: str, b: str, m: str) -> dict:
        d = per[a][m] - per[b][m]
        return {"mean": float(d.mean()), "ci": interval(d, rng)}

    out["differences"] = {
        "z_B: by A - by B": diff("A", "B", "z_B"),  # what ranking by A costs on B (hacking A, seen by B)
        "z_A: by B - by A": diff("B", "A", "z_A"),
        "z_A: ensemble_zscore - by A": diff("ensemble_zscore", "A", "z_A"),
        "z_B: ensemble_zscore - by B": diff("ensemble_zscore", "B", "z_B"),
        "top1: by B - by A": diff("B", "A", "top1"),
        "top1: ensemble_zscore - by A": diff("ensemble_zscore", "A", "top1"),
        "top1: ensemble_rank - by A": diff("ensemble_rank", "A", "top1"),
        "top1: oracle - by A": diff("oracle", "A", "top1"),
    }
    return out


def reading(f: dict) -> list[str]:
    """The plain reading of the pooled figures, written from them (a paired interval that excludes 0 is 'clearly')."""
    s, d = f["selectors"], f["differences"]

    def hacked(x: dict) -> str:
        return "lower" if x["ci"][1] < 0 else "higher" if x["ci"][0] > 0 else "not clearly different"

    def how(x: dict) -> str:
        clear = x["ci"][0] > 0 or x["ci"][1] < 0
        return f"{x['mean']:+.2f} ({x['ci'][0]:+.2f}…{x['ci'][1]:+.2f}{'' if clear else ', not clearly non-zero'})"

    return [
        f"- Ranking by A puts B's score of the pick at z {s['A']['z_B']['mean']:+.2f}, against "
        f"{s['B']['z_B']['mean']:+.2f} when ranking by B itself: by A − by B = {how(d['z_B: by A - by B'])}. "
        f"The other way, ranking by B puts A's score at {s['B']['z_A']['mean']:+.2f} against A's own "
        f"{s['A']['z_A']['mean']:+.2f}: {how(d['z_A: by B - by A'])}. A random pick is 0 on both.",
        f"- The z-score ensemble keeps {s['ensemble_zscore']['z_A']['mean']:+.2f} on A and "
        f"{s['ensemble_zscore']['z_B']['mean']:+.2f} on B (vs A alone on A: {how(d['z_A: ensemble_zscore - by A'])}; "
        f"vs B alone on B: {how(d['z_B: ensemble_zscore - by B'])}).",
        f"- Top-1 adherence: A {s['A']['top1']['mean']:.3f}, B {s['B']['top1']['mean']:.3f}, ensembles "
        f"{s['ensemble_zscore']['top1']['mean']:.3f} (z-score) and {s['ensemble_rank']['top1']['mean']:.3f} (rank), "
        f"random {s['random']['top1']['mean']:.3f}, oracle {s['oracle']['top1']['mean']:.3f}. B − A "
        f"{how(d['top1: by B - by A'])}; z-score ensemble − A {how(d['top1: ensemble_zscore - by A'])}.",
        f"- A and B pick the same candidate in {f['same_pick_A_B']:.0%} of sets; their within-set Spearman "
        f"correlation is {f['spearman_A_B']:.2f} on average.",
        f"- In short: B's score of A's pick is {hacked(d['z_B: by A - by B'])} than of B's own pick, and A's score of "
        f"B's pick is {hacked(d['z_A: by B - by A'])} than of A's own; the size of that loss, against the "
        f"{min(s['A']['z_B']['mean'], s['B']['z_A']['mean']):.2f} z either pick still gains over random on the other "
        f"verifier, says how much each ranking exploits its own verifier's quirks. The checker's oracle picks score "
        f"only {s['oracle']['z_A']['mean']:+.2f} (A) and {s['oracle']['z_B']['mean']:+.2f} (B): both verifiers rank "
        "some wrong candidates above right ones.",
    ]


NAMES = {"A": "A (shipped CLIP)", "B": "B (second CLIP)", "ensemble_zscore": "A + B, z-score ensemble",
         "ensemble_rank": "A + B, rank ensemble", "random": "random (expected)", "oracle": "checker oracle (expected)"}


def markdown(res: dict) -> str:
    s, a, b = res["settings"], res["clip_A"], res["clip_B"]
    r = lambda v: round(v, 2) + 0.0  # noqa: E731  (no "-0.00" for a random pick's float noise)
    ci = lambda x: f"{r(x['mean']):+.2f} ({r(x['ci'][0]):+.2f}…{r(x['ci'][1]):+.2f})"  # noqa: E731
    recipe = "A's recipe and settings" if b["settings"] == a["settings"] else f"settings {json.dumps(b['settings'])}"
    L = [f"# Verifier hacking in the toy world: rank by one toy CLIP, measure the other (best-of-{N}, "
         f"{s['steps']} DDIM steps, guidance {s['guidance']:g})", "",
         f"Machine: {res['machine']}. Command: `{res['command']}`. Verifier A: the shipped world's CLIP "
         f"(seed {a['seed']}, zero-shot accuracy {a['zero_shot']:.3f}); verifier B: `$SDKIT_CACHE/toy/"
         f"{Path(b['path']).name}` ({recipe}, seed {b['seed']}, zero-shot accuracy "
         f"{b['zero_shot']:.3f}, trained in {b['train_s']:.0f} s). Seed bases {', '.join(map(str, s['bases']))}, "
         f"{s['groups']} sets of {N} per prompt each ({res['groups']['pooled']['sets']} sets). z: the pick's score "
         "as a z-score within its set. Random and the oracle are expectations: the set's mean, and the mean over the "
         "candidates that pass the checker (all when none does). 95% intervals: bootstrap over sets, paired for "
         "differences. Times (generation and B's training: wall time of the first run, cached since): "
         f"{', '.join(f'{k} {v:.0f} s' for k, v in res['times'].items())}.", "", "## Reading (pooled)", ""]
    L += res["reading"]
    for name, f in res["groups"].items():
        L += ["", f"## {name} ({f['sets']} sets; mean adherence {f['mean_adherence']:.3f})", "",
              "| selector | top-1 adherence (95%) | z under A (95%) | z under B (95%) |", "|---|---|---|---|"]
        for k in SELECTORS:
            x = f["selectors"][k]
            L.append(f"| {NAMES[k]} | {x['top1']['mean']:.3f} ({x['top1']['ci'][0]:.3f}–{x['top1']['ci'][1]:.3f}) | "
                     f"{ci(x['z_A'])} | {ci(x['z_B'])} |")
        L += ["", "| paired difference | mean (95%) |", "|---|---|"]
        L += [f"| {k} | {ci(v)} |" for k, v in f["differences"].items()]
        L += ["", f"A and B pick the same candidate in {f['same_pick_A_B']:.0%} of sets; mean within-set Spearman of "
              f"A with B {f['spearman_A_B']:.2f}."]
    return "\n".join(L) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    held_out.add_arguments(p)
    p.add_argument("--second-seed", type=int, default=1, help="CLIP B's seed (the world's CLIP is seed 0)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hacking")
    args = p.parse_args(argv)
    held_out.check_arguments(p, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from machine import describe

    from sdkit.scoring.scorers import load_scorer
    from sdkit.toy.second_clip import SecondClipSettings, second_clip_path
    from sdkit.toy.world import load_world_info

    t0 = time.perf_counter()
    clip_b = second_clip_path(args.world, SecondClipSettings(seed=args.second_seed), log=print)
    b_info = json.loads((clip_b / "second_clip.json").read_text())
    scorers = {"A": load_scorer("clip", str(Path(args.world) / "clip")), "B": load_scorer("clip", str(clip_b))}
    clock: dict[str, float] = {}
    logits, ok = {}, {}
    for base in args.bases:
        data = held_out.candidates(args, base, clock)
        logits[base], ok[base] = score(data, scorers, clock), data.ok().reshape(-1, N)
    rng = np.random.default_rng(0)
    groups = {f"base {b}": figures(logits[b], ok[b], rng) for b in args.bases}
    if len(args.bases) > 1:
        pooled = {k: np.concatenate([logits[b][k] for b in args.bases]) for k in logits[args.bases[0]]}
        groups["pooled"] = figures(pooled, np.concatenate([ok[b] for b in args.bases]), rng)
    else:
        groups["pooled"] = groups[f"base {args.bases[0]}"]
    world = load_world_info(args.world)
    m = describe()
    res = {
        "machine": f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores", "machine_full": m,
        "command": shlex.join(["python", "bench/hacking.py", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {"n": N},
        "seeds": {str(b): [b, b + args.groups * N - 1] for b in args.bases},
        "clip_A": {"path": str(Path(args.world) / "clip"), "seed": world["settings"]["seed"],
                   "settings": world["settings"]["clip"], "zero_shot": world["clip_zero_shot"]},
        "clip_B": {"path": str(clip_b), "seed": b_info["settings"]["seed"], "settings": b_info["settings"]["clip"],
                   "zero_shot": b_info["clip_zero_shot"], "train_s": b_info["train_s"]},
        "times": {**clock, "total_s": time.perf_counter() - t0},
        "groups": groups,
        "reading": reading(groups["pooled"]),
    }
    write_results(args.out, res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
