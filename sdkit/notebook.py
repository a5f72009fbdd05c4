"""Helpers that keep notebooks thin: model ids that switch to built-in models, running and checking notebooks.

Every walkthrough notebook has one cell that asks for its models:

    models = sdkit.notebook.models(pipeline="CompVis/stable-diffusion-v1-4", clip="openai/clip-vit-base-patch32")

With no environment variable those are the tutorial's real Hub ids. `SDKIT_MODELS=tiny` swaps every one
for sdkit's random-weight tiny models (what CI and nbval use); `SDKIT_MODELS=toy` for the trained toy
shapes world (pictures that match prompts like "a red circle", at 32x32).

Checking notebooks (`python -m sdkit.notebook check`, or `pytest --nbval -p sdkit.notebook`) is strict nbval
with one addition that makes stored outputs portable between CPUs: a decimal number may differ from the
stored one by one unit in its last printed digit (`23.54` passes as `23.53`, not as `23.52`); integers,
words and everything else must match exactly. Another CPU's kernels (MKL, oneDNN, XLA pick other
instructions) move a CLIP score or a fingerprint by far less than that; a changed seed, prompt, scheduler,
model or guidance scale moves them by more (measured over `KERNEL_SETTINGS`, README "Regression testing").

One module (about 420 lines: `models`, the nbval plugin, and the check runner with its kernel settings run at
once) because it is one name to users: `pytest -p sdkit.notebook` loads it as a plugin, `python -m
sdkit.notebook` runs it, and notebooks import `models` from it. `models()` prints: its output is the notebook's
record of which models made the pictures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

ENV = "SDKIT_MODELS"
CHOICES = ("", "real", "tiny", "toy")


def mode() -> str:
    m = os.environ.get(ENV, "").strip().lower()
    if m not in CHOICES:
        raise ValueError(f"{ENV}={m!r}: use 'tiny', 'toy', or leave it unset for the real Hub models")
    return "real" if m in ("", "real") else m


def _substitute(role: str, model: str, m: str) -> str:
    if m == "real":
        return model
    if role == "clip":
        from sdkit.models.builtin import clip_for

        return clip_for("sdkit:toy" if m == "toy" else "sdkit:tiny")
    if role.startswith("reward"):  # a preference model (PickScore) and its processor: the toy world's reward model,
        # a CLIP fine-tuned on the pixel checker's judgements (sdkit.toy.reward); a random tiny CLIP on tiny models
        if m == "toy":
            from sdkit.toy import shipped_reward_path

            return str(shipped_reward_path())
        from sdkit.models.builtin import clip_for

        return clip_for("sdkit:tiny")
    if role in ("lora_dir", "embedding"):  # a user's own add-ons; tiny ones made for the tiny (or toy) model
        from sdkit.models.tiny_addons import tiny_embedding, tiny_lora_dir

        base = "sdkit:toy" if m == "toy" else "sdkit:tiny"
        return str(tiny_lora_dir(base) if role == "lora_dir" else tiny_embedding(base))
    if _is_xl(role, model):  # the toy world is SD-shaped: SDXL roles get the tiny SDXL models in both modes
        part = "-refiner" if "refiner" in (role + model).lower() else "-inpainting" if "inpaint" in (role + model).lower() else ""
        return f"sdkit:tiny-xl{part}"
    if m == "toy":
        return "sdkit:toy"
    return "sdkit:tiny-inpainting" if "inpaint" in role or "inpaint" in model else "sdkit:tiny"


def _is_xl(role: str, model: str) -> bool:
    """An SDXL role by its Hub id's words (`stable-diffusion-xl-base-1.0`, `sdxl-turbo`) or the role's name."""
    return role != "clip" and bool(re.search(r"(^|[-_/])(sd)?xl([-_/]|$)", f"{role}/{model}".lower()))


def models(**ids: str) -> SimpleNamespace:
    """The model ids a notebook uses, by role (`pipeline=`, `inpainting=`, `clip=`...), switched by `SDKIT_MODELS`.

    Prints which set is in use, so a notebook's output always says whether its pictures are real.
    """
    m = mode()
    chosen = {role: _substitute(role, mid, m) for role, mid in ids.items()}
    # The models' native image size, so one notebook makes 512px images for real and 64px ones on tiny models,
    # and settings that make good pictures with each: the toy world wants little guidance (README, toy world).
    # SDXL notebooks: 1024px and diffusers' SDXL guidance for real, the tiny SDXL models' 64px otherwise.
    xl = any(_is_xl(role, mid) for role, mid in ids.items())
    size = {"real": 1024 if xl else 512, "tiny": 64, "toy": 64 if xl else 32}[m]
    steps, guidance = {"real": (30, 5.0 if xl else 7.5), "tiny": (30, 5.0 if xl else 7.5),
                       "toy": (30, 5.0) if xl else (20, 2.0)}[m]
    label = {"real": "real Hub models", "tiny": "sdkit's TINY RANDOM-WEIGHT models (pictures are noise)",
             "toy": "the TOY SHAPES world (trained 32x32 shapes, not Stable Diffusion)"}[m]
    print(f"Models: {label}")
    for role, mid in ids.items():
        print(f"  {role}: {mid}" + (f"  ->  {_short(chosen[role])}" if chosen[role] != mid else ""))
    if m == "toy" and xl:
        print("  The toy world is Stable Diffusion 1.x-shaped: SDXL roles use sdkit's tiny random-weight SDXL models.")
    elif m == "toy":
        from sdkit.toy import shapes

        print(f"  The toy world draws 'a <colour> <shape>' only: colours {', '.join(shapes.COLORS)}; shapes "
              f"{', '.join(shapes.SHAPES)}; it was trained on nothing else.")
    print(f"  (switch with `%env {ENV}=toy` or `tiny` before this cell, or unset it for the real models)")
    return SimpleNamespace(**chosen, mode=m, size=size, steps=steps, guidance=guidance)


def models_mode_of(path, default: str = "tiny") -> str:
    """The models a notebook's stored outputs come from: its metadata's `sdkit.models`, else `default`."""
    meta = json.loads(Path(path).read_text()).get("metadata", {}).get("sdkit", {})
    m = meta.get("models", default)
    if m not in ("tiny", "toy"):
        raise ValueError(f"{path}: metadata sdkit.models={m!r}: use 'tiny' or 'toy'")
    return m


def _short(model: str) -> str:
    # Cache paths differ between machines; print a stable name so nbval output does not.
    return f"<{Path(model).parent.name.split('-')[0]}/{Path(model).name.split('-')[0]}>" if os.path.isabs(model) else model


def in_colab() -> bool:
    return "google.colab" in sys.modules


THICK = re.compile(r"^\s*(def|class|for|while|async\s+def)\b", re.M)


def thick_cells(path) -> list[int]:
    """Indices of code cells that hold logic (def/class/loops): that belongs in the sdkit package."""
    nb = json.loads(Path(path).read_text())
    return [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and THICK.search("".join(c["source"]))]


def _notebooks(paths) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r}: no such notebook or folder")
        files += sorted(p.glob("*.ipynb")) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"no notebooks in {[str(p) for p in paths]}")
    return files


def _fresh_tree(files: list[Path], tmp: Path) -> dict[Path, Path]:
    """Copy each notebook's folder into `tmp`, beside an empty outputs/, as a fresh clone has them.

    Notebooks write to ../outputs and resume from what is there (a sweep skips finished images), so
    running them in the checkout would store, or check, results left by older code.
    """
    copies = {}
    for folder in sorted({f.resolve().parent for f in files}):
        dest = tmp / f"{len(copies)}" / folder.name
        shutil.copytree(folder, dest, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        copies[folder] = dest
    return {f: copies[f.resolve().parent] / f.name for f in files}


def _models_env(models_mode: str):
    """`SDKIT_MODELS` for the kernels started inside, restored after."""
    return mock.patch.dict(os.environ, {ENV: models_mode})


# Instruction-set caps that make one machine compute like another: MKL and oneDNN (torch) and XLA (the
# Flax scorer) each pick kernels by CPU, and their last bits differ. "default" is what this CPU picks.
KERNEL_SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"},
    "avx512": {"MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
               "XLA_FLAGS": "--xla_cpu_max_isa=AVX512"},
}


def _kernel_env(setting: str) -> dict[str, str]:
    if setting not in KERNEL_SETTINGS:
        raise ValueError(f"kernel setting {setting!r}: choose from {list(KERNEL_SETTINGS)}")
    env = dict(os.environ)
    for k, v in KERNEL_SETTINGS[setting].items():
        env[k] = f"{env[k]} {v}" if k == "XLA_FLAGS" and env.get(k) else v
    return env


# ---- nbval with a last-digit tolerance for decimal numbers (a pytest plugin: `-p sdkit.notebook`) ----

DECIMAL = re.compile(r"(?<![\w.])[-+]?\d+\.\d+(?![\w.])")  # 23.54, -0.10; not 0.42.1 or a1.5


def _close(stored: str, new: str, units: int) -> bool:
    d = len(stored.split(".")[1])
    if d != len(new.split(".")[1]):
        return False
    return abs(float(stored) - float(new)) <= units * 10.0 ** -d * (1 + 1e-9)


def align_numbers(stored: str, new: str, units: int = 1) -> str:
    """`new` with every decimal number that is within `units` of the last printed digit of the stored number
    at the same place replaced by the stored one. Only when the text around the numbers is identical; any
    other difference is left for nbval to report."""
    if units <= 0 or stored == new:
        return new
    stored_text, new_text = DECIMAL.split(stored), DECIMAL.split(new)
    if stored_text != new_text:
        return new
    numbers = [s if _close(s, n, units) else n for s, n in zip(DECIMAL.findall(stored), DECIMAL.findall(new))]
    return "".join(t + n for t, n in zip(new_text, numbers + [""]))


def _texts(output):
    """(key, container, field) for each text of an nbval output: stream text and text/plain data."""
    if output.get("output_type") == "stream" and isinstance(output.get("text"), str):
        yield ("stream", output.get("name")), output, "text"
    data = output.get("data") or {}
    if isinstance(data.get("text/plain"), str):
        yield ("data", "text/plain"), data, "text/plain"


# The tolerant comparisons installed on nbval (`pytest_configure` may run more than once in a process).
_TOLERANT: set = set()


def _tolerant(compare_outputs):
    def wrapped(self, test, ref, skip_compare=None):
        units = self.config.getoption("sdkit_tolerance")
        stored = {}
        for out in ref:
            for key, box, field in _texts(out):
                stored.setdefault(key, []).append(self.sanitize(box[field]))
        seen: dict = {}
        for out in test:  # nbval's own outputs of this run; aligning them in place is safe
            for key, box, field in _texts(out):
                i = seen[key] = seen.get(key, -1) + 1
                if i < len(stored.get(key, [])):
                    new = self.sanitize(box[field])
                    box[field] = align_numbers(stored[key][i], new, units)
                    if box[field] != new:
                        _report(self, new, box[field])
        return compare_outputs(self, test, ref, skip_compare)

    _TOLERANT.add(wrapped)
    return wrapped


def _report(item, new: str, aligned: str) -> None:
    """With --sdkit-report FILE: one JSON line per output that passed only thanks to the tolerance."""
    path = item.config.getoption("sdkit_report")
    if path:
        changed = [(s, n) for s, n in zip(DECIMAL.findall(aligned), DECIMAL.findall(new)) if s != n]
        with open(path, "a") as f:
            caps = {k: os.environ[k] for k in ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA") if k in os.environ}
            f.write(json.dumps({"cell": item.nodeid, "stored_vs_new": changed, "kernel_caps": caps}) + "\n")


def pytest_addoption(parser):
    parser.addoption("--sdkit-tolerance", type=int, default=1, dest="sdkit_tolerance",
                     help="decimal numbers in notebook outputs may differ by this many units of their last "
                          "printed digit (default 1; 0 = plain strict nbval)")
    parser.addoption("--sdkit-report", default=None, dest="sdkit_report",
                     help="append a JSON line per output that matched only within the tolerance to this file")


def pytest_configure(config):
    from nbval.plugin import IPyNbCell

    if IPyNbCell.compare_outputs not in _TOLERANT:
        IPyNbCell.compare_outputs = _tolerant(IPyNbCell.compare_outputs)


def execute(paths, timeout: int = 1200, models_mode: str = "tiny") -> None:
    """Run notebooks with `SDKIT_MODELS=models_mode` (or their metadata's `sdkit.models`) and store their outputs.

    They run in a temporary copy with an empty outputs/, in order, so the stored outputs are those a
    fresh clone (CI) produces; only the notebooks themselves are written back.
    """
    import nbformat
    from nbclient import NotebookClient

    files = _notebooks(paths)
    with tempfile.TemporaryDirectory(prefix="sdkit-notebooks-") as tmp:
        for f, copy in _fresh_tree(files, Path(tmp)).items():
            m = models_mode_of(f, models_mode)
            print(f"executing {f} ({ENV}={m}) ...", flush=True)
            nb = nbformat.read(copy, as_version=4)
            with _models_env(m):
                NotebookClient(nb, timeout=timeout, kernel_name="python3",
                               resources={"metadata": {"path": str(copy.parent)}}).execute()
            for cell in nb.cells:  # execution timings would make every re-run a diff
                cell.get("metadata", {}).pop("execution", None)
            nbformat.write(nb, f)


def check(paths, sanitize: str | None = None, models_mode: str = "tiny", pytest_args=(),
          kernels=("default",), tolerance: int = 1, jobs: int = 1) -> int:
    """Strict nbval on notebooks, in a temporary copy with an empty outputs/ (see `execute`); pytest's exit code.

    `sanitize`: an nbval sanitize file (default: sanitize.cfg beside the first notebook, if there is one).
    `kernels`: names in `KERNEL_SETTINGS`; the check runs once under each (each in a fresh copy) and fails
    if any run fails. `tolerance`: units in the last printed digit a decimal number may differ by (0: none).
    `jobs`: how many of those runs go at once (each run's output is printed when it ends). The tiny models'
    cells are mostly Python, one core each, so on 2 cores 3 runs at once took 0.5-0.6 of the time of 3 in a row
    (README); each keeps its thread count (the arithmetic stays as stored) and its threads wait passively.
    """
    if sanitize is not None and not Path(sanitize).exists():
        raise FileNotFoundError(f"sanitize={str(sanitize)!r}: no such file")
    if not isinstance(tolerance, int) or isinstance(tolerance, bool) or tolerance < 0:
        raise ValueError(f"tolerance={tolerance!r}: must be an integer >= 0 (units in the last printed digit)")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs={jobs!r}: must be an integer >= 1 (runs at once)")
    envs = {k: _kernel_env(k) for k in kernels}
    if not envs:
        raise ValueError(f"kernels={kernels!r}: name at least one of {list(KERNEL_SETTINGS)}")
    files = _notebooks(paths)
    sanitize = Path(sanitize) if sanitize else files[0].parent / "sanitize.cfg"
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(models_mode_of(f, models_mode), []).append(f)
    runs = [(name, env, m, group) for name, env in envs.items() for m, group in groups.items()]
    with tempfile.TemporaryDirectory(prefix="sdkit-nbval-") as top:
        if jobs == 1:
            codes = [_nbval_run(run, Path(top) / str(i), sanitize, tolerance, pytest_args, len(envs) > 1)
                     for i, run in enumerate(runs)]
        else:
            codes = _nbval_parallel(runs, Path(top), sanitize, tolerance, pytest_args, jobs)
    return next((c for c in codes if c), 0)


def _nbval_args(group: list[Path], tmp: Path, sanitize: Path, tolerance: int, pytest_args) -> list[str]:
    copies = _fresh_tree(group, tmp)
    args = [sys.executable, "-m", "pytest", "--nbval", "-p", "sdkit.notebook", f"--sdkit-tolerance={tolerance}",
            *map(str, copies.values()), "--rootdir", str(tmp), "-p", "no:cacheprovider", *pytest_args]
    if sanitize.exists():
        args += ["--nbval-sanitize-with", str(sanitize.resolve())]
    return args


def _header(name: str, m: str) -> str:
    return f"== notebooks under kernel setting {name!r}: {KERNEL_SETTINGS[name] or 'this CPU as it is'} ({ENV}={m})"


def _nbval_run(run, tmp: Path, sanitize: Path, tolerance: int, pytest_args, header: bool) -> int:
    name, env, m, group = run
    if header:
        print(_header(name, m), flush=True)
    tmp.mkdir()
    args = _nbval_args(group, tmp, sanitize, tolerance, pytest_args)
    return subprocess.run(args, env={**env, ENV: m}, cwd=tmp).returncode


def _nbval_parallel(runs, top: Path, sanitize: Path, tolerance: int, pytest_args, jobs: int) -> list[int]:
    """The runs, `jobs` at a time, each one's output printed whole when it ends; their exit codes in order."""
    import time

    codes: list[int | None] = [None] * len(runs)
    live: dict[int, tuple[subprocess.Popen, Path, float]] = {}
    pending = list(range(len(runs)))
    try:
        while pending or live:
            while pending and len(live) < jobs:
                i = pending.pop(0)
                name, env, m, group = runs[i]
                (top / str(i)).mkdir()
                log = top / f"{i}.log"
                with open(log, "wb") as out:  # the child keeps its own handle
                    proc = subprocess.Popen(_nbval_args(group, top / str(i), sanitize, tolerance, pytest_args),
                                            env={**env, ENV: m, "OMP_WAIT_POLICY": "PASSIVE"}, cwd=top / str(i),
                                            stdout=out, stderr=subprocess.STDOUT)
                live[i] = (proc, log, time.monotonic())
            time.sleep(0.5)
            for i, (proc, log, t0) in list(live.items()):
                if proc.poll() is not None:
                    del live[i]
                    codes[i] = proc.returncode
                    print(f"{_header(runs[i][0], runs[i][2])}: exit code {proc.returncode} after "
                          f"{time.monotonic() - t0:.0f} s", flush=True)
                    sys.stdout.write(log.read_text(errors="replace"))
                    sys.stdout.flush()
    finally:  # stopped (Ctrl-C, an error): no nbval run is left behind
        for proc, _, _ in live.values():
            proc.kill()
    return codes


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sdkit.notebook",
                                     description="Run notebooks and store their outputs, or check them with strict nbval.")
    parser.add_argument("command", choices=["execute", "check"])
    parser.add_argument("paths", nargs="*", default=["notebooks"], help="notebooks or folders (default: notebooks)")
    parser.add_argument("--kernels", default="default",
                        help=f"check: comma-separated kernel settings to run under, of {list(KERNEL_SETTINGS)}, or 'all'")
    parser.add_argument("--jobs", type=int, default=1,
                        help="check: how many kernel settings run at once (default 1; output printed as each ends)")
    parser.add_argument("--tolerance", type=int, default=1,
                        help="check: units in the last printed digit a decimal number may differ by (default 1)")
    parser.add_argument("--sanitize", default=None, help="check: an nbval sanitize file (default: sanitize.cfg beside)")
    parser.add_argument("--report", default=None,
                        help="check: append a JSON line to this file for each output that matched only within the tolerance")
    args = parser.parse_intermixed_args(argv)
    if args.command == "execute":
        try:
            execute(args.paths)
        except FileNotFoundError as e:
            parser.error(str(e))
        return 0
    kernels = list(KERNEL_SETTINGS) if args.kernels == "all" else [k.strip() for k in args.kernels.split(",") if k.strip()]
    extra = [f"--sdkit-report={Path(args.report).resolve()}"] if args.report else []
    try:
        return check(args.paths, sanitize=args.sanitize, kernels=kernels, tolerance=args.tolerance, pytest_args=extra,
                     jobs=args.jobs)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))


if __name__ == "__main__":
    sys.exit(main())
