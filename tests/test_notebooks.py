"""The walkthrough notebooks: thin, switchable to tiny models, regression-tested, listed in the README.

`make test` also runs `pytest --nbval` (strict) over notebooks/; these tests check the notebooks' shape and
that nbval really fails when a picture changes.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdkit.notebook import align_numbers, models_mode_of, thick_cells

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _code(nb_path):
    return ["".join(c["source"]) for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"]


def test_there_are_walkthroughs():
    names = [p.stem for p in NOTEBOOKS]
    for topic in ("quickstart", "text_to_image", "clip_reranking", "styled_prompts", "inpainting", "explorer", "sweep",
                  "testing"):
        assert any(topic in n for n in names), topic


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin(nb):
    assert thick_cells(nb) == [], "code cells with def/class/loops: move that logic into sdkit"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_models_come_from_one_cell_with_real_defaults(nb):
    cells = [c for c in _code(nb) if "models(" in c and "= models(" in c]
    assert len(cells) == 1
    ids = re.findall(r'=\s*"([^"]+)"', cells[0].split("= models(", 1)[1])
    assert ids and not any(i.startswith("sdkit:") for i in ids)  # real Hub ids by default
    assert not any("sdkit:" in c for c in _code(nb)), "model ids belong in the models() cell only"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_are_stored_and_clean(nb):
    data = json.loads(nb.read_text())
    code = [c for c in data["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] is not None for c in code[1:]), "run `make notebooks` to store outputs"
    text = json.dumps(data)
    assert '"output_type": "error"' not in text
    label = {"tiny": "TINY RANDOM-WEIGHT", "toy": "TOY SHAPES"}[models_mode_of(nb)]
    assert label in text  # stored outputs say which models made them (tiny, or the toy world's real pictures)
    for secret in ("hf_", "HF_TOKEN=", "use_auth_token"):
        assert secret not in "".join(_code(nb)), f"{secret!r} in a code cell"


@pytest.mark.parametrize("nb", [p for p in NOTEBOOKS if "sweep" not in p.stem], ids=lambda p: p.stem)
def test_images_are_fingerprinted(nb):
    assert any("fingerprint(" in c for c in _code(nb)), "print a fingerprint so nbval notices changed pictures"


def test_quickstart_shows_the_toy_world():
    """The first notebook a newcomer opens has real pictures: stored from the toy world, the grid included."""
    nb = json.loads((ROOT / "notebooks" / "00_quickstart.ipynb").read_text())
    assert models_mode_of(ROOT / "notebooks" / "00_quickstart.ipynb") == "toy"
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the ranked grid is stored as a picture"
    ranking = next("".join(o["text"]) for o in outputs if "CLIP score" in "".join(o.get("text", "")))
    assert "'a red circle'" in ranking and "'a blue triangle'" in ranking


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_opening_in_jupyterlab_changes_nothing(nb):
    """JupyterLab writes the running kernel's spec into the notebook; a stored one that differs marks the
    notebook modified the moment it opens (tests/test_browser.py checks the tab in a real browser)."""
    from jupyter_client.kernelspec import KernelSpecManager

    stored = json.loads(nb.read_text())["metadata"]["kernelspec"]
    spec = KernelSpecManager().get_kernel_spec(stored["name"])
    assert stored == {"display_name": spec.display_name, "language": spec.language, "name": "python3"}


def test_readme_lists_every_notebook():
    readme = (ROOT / "README.md").read_text()
    for nb in NOTEBOOKS:
        assert f"notebooks/{nb.name}" in readme, nb.name


def test_colab_cell_installs_only_in_colab():
    for nb in NOTEBOOKS:
        first = next(c for c in _code(nb) if "pip install" in c)
        assert 'if "google.colab" in sys.modules:' in first


@pytest.mark.slow
def test_nbval_fails_when_a_picture_changes(tmp_path):
    """Strict nbval passes on the stored outputs and fails once the seed (so the picture) changes."""
    src = ROOT / "notebooks" / "07_testing_your_notebooks.ipynb"
    ok = tmp_path / "ok" / src.name
    bad = tmp_path / "bad" / src.name
    for p in (ok, bad):
        p.parent.mkdir()
        shutil.copy(src, p)
    nb = json.loads(bad.read_text())
    for c in nb["cells"]:
        c["source"] = [line.replace("seed=7", "seed=8") for line in c["source"]]
    bad.write_text(json.dumps(nb))
    env = {**os.environ, "SDKIT_MODELS": "tiny"}
    args = [sys.executable, "-m", "pytest", "-q", "--nbval", "-p", "no:cacheprovider",
            "--nbval-sanitize-with", str(ROOT / "notebooks" / "sanitize.cfg")]
    good = subprocess.run(args + [str(ok)], cwd=ok.parent, env=env, capture_output=True, text=True, timeout=600)
    assert good.returncode == 0, good.stdout[-3000:]
    changed = subprocess.run(args + [str(bad)], cwd=bad.parent, env=env, capture_output=True, text=True, timeout=600)
    stored = next("".join(o["text"]).strip() for c in json.loads(src.read_text())["cells"] if c["cell_type"] == "code"
                  and "print(fingerprint(" in "".join(c["source"]) for o in c["outputs"] if o.get("name") == "stdout")
    assert changed.returncode == 1 and stored in changed.stdout, changed.stdout[-3000:]


def _resume_notebook(path: Path, stored: str | None = None) -> None:
    """A notebook that, like a sweep, finds what an earlier run left in ../outputs, and leaves something there."""
    src = ('import os\nprint("found an old run:", os.path.exists("../outputs/marker"))\n'
           'os.makedirs("../outputs", exist_ok=True)\nopen("../outputs/marker", "w").close()')
    outputs = [] if stored is None else [{"name": "stdout", "output_type": "stream", "text": [stored]}]
    cell = {"cell_type": "code", "execution_count": 1 if outputs else None, "id": "c1", "metadata": {},
            "outputs": outputs, "source": [src]}
    nb = {"cells": [cell], "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb))


@pytest.mark.slow
def test_execute_and_check_run_on_an_empty_outputs_dir(tmp_path):
    """What `make notebooks` stores and `make test` checks is what a fresh clone (CI) produces."""
    from sdkit.notebook import check, execute

    nb = tmp_path / "notebooks" / "resume.ipynb"
    _resume_notebook(nb)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "marker").touch()  # left by an earlier run in the checkout
    execute([nb.parent])
    text = json.loads(nb.read_text())["cells"][0]["outputs"][0]["text"]
    assert "".join(text) == "found an old run: False\n"
    assert sorted(os.listdir(tmp_path / "outputs")) == ["marker"]  # the checkout's outputs/ is left alone
    assert check([nb.parent]) == 0
    _resume_notebook(nb, stored="found an old run: True\n")  # outputs stored from a stale checkout
    assert check([nb.parent]) == 1


@pytest.mark.slow
def test_kernel_settings_run_at_once_give_each_result_and_output(tmp_path, capsys):
    """`jobs=2`: every kernel setting's run is reported whole, with its own exit code; one failing run fails it."""
    from sdkit.notebook import check, execute

    nb = tmp_path / "notebooks" / "resume.ipynb"
    _resume_notebook(nb)
    execute([nb.parent])
    capsys.readouterr()
    assert check([nb.parent], kernels=("default", "avx2", "avx512"), jobs=2) == 0
    out = capsys.readouterr().out
    assert [out.count(f"kernel setting {name!r}") for name in ("default", "avx2", "avx512")] == [1, 1, 1], out
    assert out.count(": exit code 0 after") == 3 and out.count("1 passed") == 3, out
    _resume_notebook(nb, stored="found an old run: True\n")
    assert check([nb.parent], kernels=("default", "avx2"), jobs=2) == 1
    out = capsys.readouterr().out
    assert out.count(": exit code 1 after") == 2 and out.count("1 failed") == 2, out
    with pytest.raises(ValueError, match="jobs=0: must be an integer >= 1"):
        check([nb.parent], jobs=0)


def test_execute_and_check_name_a_missing_path_before_any_work(tmp_path):
    from sdkit.notebook import check, execute

    with pytest.raises(FileNotFoundError, match="'nope.ipynb': no such notebook or folder"):
        execute(["nope.ipynb"])
    with pytest.raises(FileNotFoundError, match=r"no notebooks in \["):
        check([tmp_path])
    with pytest.raises(FileNotFoundError, match="sanitize='missing.cfg': no such file"):
        check([tmp_path], sanitize="missing.cfg")


def test_decimal_numbers_may_differ_by_one_unit_in_their_last_digit():
    assert align_numbers("CLIP score  23.54   seed 6", "CLIP score  23.53   seed 6") == "CLIP score  23.54   seed 6"
    assert align_numbers("CLIP score  23.54   seed 6", "CLIP score  23.55   seed 6") == "CLIP score  23.54   seed 6"
    assert align_numbers("23.54", "23.52") == "23.52"  # two units: a real change
    assert align_numbers("23.54", "23.5") == "23.5"  # another precision is another output
    assert align_numbers("seed 6 23.54", "seed 7 23.53") == "seed 7 23.53"  # integers are exact, so nothing aligns
    assert align_numbers("a 1.50", "b 1.51") == "b 1.51"  # the words around the numbers must match
    assert align_numbers("sdkit 0.42.1", "sdkit 0.42.2") == "sdkit 0.42.2"  # versions are not decimals
    assert align_numbers("131.53/133.88 0.10", "131.54/133.87 -0.10") == "131.53/133.88 -0.10"
    assert align_numbers("23.54", "23.53", units=0) == "23.53"  # tolerance 0: plain strict nbval


# Real edits a notebook's author could make, each of which must fail the check (on the tiny models, where a
# change shows least). Each is (what, old text, new text) in notebook 01's cells.
EDITS = [
    ("seed", 'autumn leaves", n=3, seed=0', 'autumn leaves", n=3, seed=1'),
    ("guidance", "num_inference_steps=50,\n", "num_inference_steps=50, guidance_scale=7.0,\n"),
    ("prompt", '"dog sitting in a field of autumn leaves"', '"dog sitting in a field of autumn leaf"'),
    ("scheduler", 'scheduler="DPM++ 2M Karras"', 'scheduler="DPM++ 2M"'),
    ("model", "pipe = load_pipeline(models.pipeline)",
     "pipe = load_pipeline(str(__import__('sdkit.models.tiny').tiny.tiny_pipeline_path(seed=1)))"),  # same shapes, other weights
]


@pytest.mark.slow
@pytest.mark.parametrize("what,old,new", [(None, None, None)] + EDITS, ids=["unedited"] + [e[0] for e in EDITS])
def test_notebook_check_fails_on_a_real_edit(tmp_path, what, old, new):
    """The tolerance for other CPUs' rounding does not hide a changed seed, guidance, prompt, scheduler or model."""
    from sdkit.notebook import check

    src = ROOT / "notebooks" / "01_text_to_image_basics.ipynb"
    nb = json.loads(src.read_text())
    hits = 0
    for c in nb["cells"]:
        text = "".join(c["source"])
        if old and old in text and c["cell_type"] == "code":
            hits += text.count(old)
            c["source"] = text.replace(old, new).splitlines(keepends=True)
    assert hits == (1 if old else 0), f"the {what} edit matches {hits} places in {src.name}"
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / src.name).write_text(json.dumps(nb))
    shutil.copy(ROOT / "notebooks" / "sanitize.cfg", tmp_path / "notebooks")
    code = check([tmp_path / "notebooks"], pytest_args=["-q"])
    assert code == (1 if what else 0), f"edit {what!r}: check returned {code}"


@pytest.mark.parametrize("mode", ["toy", "tiny", "real"])
def test_a_preference_model_role_switches_with_the_models(mode, monkeypatch):
    """`reward=` / `reward_processor=` (PickScore and its processor in notebook 08) are the toy reward model in the
    toy world, scored as the `toy-reward` verifier scores it, a tiny CLIP on tiny models, the Hub ids for real."""
    from PIL import Image

    from sdkit import load_scorer
    from sdkit.notebook import models

    monkeypatch.setenv("SDKIT_MODELS", "" if mode == "real" else mode)
    m = models(reward="yuvalkirstain/PickScore_v1", reward_processor="laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    if mode == "real":
        assert (m.reward, m.reward_processor) == ("yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
        return
    assert m.reward == m.reward_processor and os.path.isdir(m.reward)
    images, prompts = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")], ["a red circle", "a blue square"]
    pick = load_scorer("pickscore", {"model": m.reward, "processor": m.reward_processor}, backend="torch")
    logits = pick(images, prompts).logits
    if mode == "toy":
        same = load_scorer("toy-reward", backend="torch")(images, prompts).logits
        assert np.array_equal(np.asarray(logits), np.asarray(same))
    assert np.all(np.isfinite(logits)) and len(logits) == 2
