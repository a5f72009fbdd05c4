"""The repository's promises about itself: dependencies agree, CI runs the README's test command."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _spec(req: str) -> str:
    return req.replace(" ", "").lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    env_reqs = {_name(r): _spec(r) for r in pip if not r.startswith("-")}
    for req in project["dependencies"] + project["optional-dependencies"]["notebook"]:
        assert env_reqs.get(_name(req)) == _spec(req), f"environment.yml lacks or differs on {req!r}"
    assert "-e ." in pip  # installs sdkit itself
    pinned = re.search(r"python=(\d+\.\d+)", " ".join(map(str, env["dependencies"]))).group(1)
    low = re.search(r">=(\d+\.\d+)", project["requires-python"]).group(1)
    assert tuple(map(int, pinned.split("."))) >= tuple(map(int, low.split(".")))


def test_cuda_environment_matches_pyproject():
    """environment-cuda.yml: environment.yml's packages with JAX's CUDA plugin (the `cuda` extra), torch from
    PyTorch's CUDA index."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment-cuda.yml").read_text())
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    env_reqs = {_name(r): _spec(r) for r in pip if not r.startswith("-")}
    cuda = {_name(r): _spec(r) for r in project["optional-dependencies"]["cuda"]}
    assert cuda == {"jax": "jax[cuda12]>=0.6"}
    for req in project["dependencies"] + project["optional-dependencies"]["notebook"]:
        assert env_reqs.get(_name(req)) == cuda.get(_name(req), _spec(req)), f"environment-cuda.yml differs on {req!r}"
    assert "--extra-index-url https://download.pytorch.org/whl/cu128" in pip and "-e ." in pip


def test_transformers_is_not_pinned_below_5():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "transformers>=5" in [d.replace(" ", "") for d in deps]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^\s*(make \w[\w-]*)\s*$", readme, re.M)
    assert "make test" in commands and "make demo" in commands
    assert re.search(r"^make test$", ci, re.M)


def test_no_weights_or_pickles_committed():
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert not [f for f in files if f.endswith((".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".pkl"))]
    # The one exception: the shipped toy world, safetensors only, a few MB, hashed in its SHIPPED.json
    # (tests/test_toy.py checks the hash).
    weights = [f for f in files if f.endswith(".safetensors")]
    assert weights and all(f.startswith("sdkit/toy/fixture/") for f in weights), weights
    assert sum((ROOT / f).stat().st_size for f in weights) < 8e6
