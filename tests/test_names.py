"""One meaning per name in sdkit's API (issue 23): a checkpoint argument is `model`, a dtype is `dtype`.

Read from the sources with `ast` (every function, private ones too), and from the loaders' signatures.
Calls into diffusers and transformers keep their own keywords; only sdkit's own parameters are checked.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import sdkit

ROOT = Path(sdkit.__file__).parent
# model_id names the recorded field (Candidate.model_id, the metadata), never an argument.
RETIRED = {"model_id": "model", "model_or_path": "model", "torch_dtype": "dtype"}


def test_no_function_takes_a_retired_name():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                a = node.args
                for arg in a.posonlyargs + a.args + a.kwonlyargs:
                    if arg.arg in RETIRED:
                        found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {arg.arg} (say {RETIRED[arg.arg]})")
    assert not found, "\n".join(found)


def loaders():
    from sdkit.load.hub import resolve_clip
    from sdkit.load.pipeline import load_pipeline
    from sdkit.load.previewer import load_previewer
    from sdkit.scoring.flax.scorer import FlaxCLIPScorer
    from sdkit.scoring.flax.weights import load_flax_clip
    from sdkit.scoring.scorers import get_scorer, load_scorer
    from sdkit.scoring.torch_clip import TorchCLIPScorer

    return [load_pipeline, load_previewer, load_scorer, get_scorer, FlaxCLIPScorer, TorchCLIPScorer, load_flax_clip,
            resolve_clip]


@pytest.mark.parametrize("loader", loaders(), ids=lambda f: f.__name__)
def test_every_loader_takes_its_checkpoint_as_model(loader):
    params = inspect.signature(loader).parameters
    assert "model" in params and "clip_model" not in params, list(params)
    if "dtype" in params or loader.__name__ in ("load_pipeline", "load_previewer"):
        assert "dtype" in params and "torch_dtype" not in params
