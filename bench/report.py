"""Results: one JSON (everything) and one markdown page (the tables the README shows)."""

from __future__ import annotations

import json
import operator
from pathlib import Path

from .timing import Stat, best_ratio, ratios

_OPS = {"<=": operator.le, ">=": operator.ge}


def ratio(name: str, samples: list[float], *, what: str, target: tuple[str, float] | None = None,
          best: float | None = None, note: str = "") -> dict:
    """A measured ratio with its spread, and whether its median meets `target` (op, value).

    `best` is the ratio of the two fastest repetitions: the least disturbed by neighbours' load.
    """
    s = Stat.of(samples)
    row = {"name": name, "what": what, **s.to_dict(), "best": best, "samples": samples, "note": note}
    if target is not None:
        op, value = target
        row["target"] = f"{op} {value:g}"
        row["met"] = bool(_OPS[op](s.median, value))
    return row


def compare(name: str, times: dict[str, list[float]], num: str, den: str, *, target=None, what: str | None = None,
            note: str = "") -> dict:
    """`ratio` of two interleaved cases' times, per repetition."""
    return ratio(name, ratios(times, num, den), what=what or f"{num} / {den}", target=target,
                 best=best_ratio(times, num, den), note=note)


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def ratio_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        met = {True: "yes", False: "**no**"}.get(r.get("met"), "–")
        best = "–" if r.get("best") is None else f"{r['best']:.3g}×"
        body.append([r["name"], r["what"], f"{r['median']:.3g}×", f"{r['min']:.3g}–{r['max']:.3g}", best, r["n"],
                     r.get("target", "–"), met])
    return table(["measure", "ratio of", "median", "spread (min–max)", "best/best", "reps", "target", "met"], body)


def times_table(times: dict[str, dict], unit: str = "s") -> str:
    return table(["case", f"median ({unit})", "spread (min–max)", "reps"],
                 [[k, v["median"], f"{v['min']:.3g}–{v['max']:.3g}", v["n"]] for k, v in times.items()])


def machine_lines(m: dict) -> str:
    return (f"Machine: {m['cpu']} ({m['cores']} cores, torch threads {m['torch_threads']}, "
            f"{m['cpu_flags']}), load average at start {m['loadavg']}; "
            f"Python {m['python']}, torch {m['torch']}, diffusers {m['diffusers']}, transformers "
            f"{m['transformers']}, jax {m['jax']}, flax {m['flax']}; sdkit commit {m['commit']}; {m['date']}.")


def markdown(result: dict) -> str:
    """The page: the machine, every ratio against its target, then each benchmark's details."""
    parts = [f"# sdkit benchmarks{' (smoke run: tiny models, not real figures)' if result['smoke'] else ''}",
             "", machine_lines(result["machine"]), "",
             "Every ratio is measured side by side in one process, the cases interleaved within each repetition "
             "(median and min–max over repetitions). Produced by `make bench` (`bench/run.py`).", "",
             "## Ratios and targets", "", ratio_table([r for b in result["benchmarks"].values() for r in b["ratios"]])]
    for name, b in result["benchmarks"].items():
        parts += ["", f"## {b['title']}", "", b["setup"]]
        if b.get("times"):
            parts += ["", times_table(b["times"], b.get("unit", "s"))]
        for extra in b.get("tables", []):
            parts += ["", extra]
        for line in b.get("notes", []):
            parts += ["", line]
    return "\n".join(parts) + "\n"


def write(result: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "latest.json", out_dir / "latest.md"
    js.write_text(json.dumps(result, indent=1, default=str) + "\n")
    md.write_text(markdown(result))
    return js, md


BEGIN, END = "<!-- bench:begin (written by make bench) -->", "<!-- bench:end -->"


def readme_section(result: dict) -> str:
    """What the README shows: the machine and every ratio against its target."""
    return "\n".join([machine_lines(result["machine"]), "",
                      ratio_table([r for b in result["benchmarks"].values() for r in b["ratios"]])])


def update_readme(readme: Path, result: dict) -> None:
    """Replace the text between the README's bench markers with this run's table."""
    text = readme.read_text()
    a, b = text.find(BEGIN), text.find(END)
    if a < 0 or b < a:
        raise ValueError(f"{readme}: no {BEGIN} ... {END} markers to put the table between")
    readme.write_text(text[: a + len(BEGIN)] + "\n" + readme_section(result) + "\n" + text[b:])


def write_results(out: Path, data, md: str, indent: int = 1) -> None:
    """`out`.json (the figures) and `out`.md (the tables) of one benchmark script, and the tables on stdout."""
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=indent, default=str) + "\n")
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out.with_suffix('.json')} and .md")
