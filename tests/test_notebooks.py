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

import pytest

from sdkit.notebook import thick_cells

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _code(nb_path):
    return ["".join(c["source"]) for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"]


def test_there_are_walkthroughs():
    names = [p.stem for p in NOTEBOOKS]
    for topic in ("text_to_image", "clip_reranking", "styled_prompts", "inpainting", "explorer", "sweep", "testing"):
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
    assert "TINY RANDOM-WEIGHT" in text  # stored outputs are from the tiny models, and say so
    for secret in ("hf_", "HF_TOKEN=", "use_auth_token"):
        assert secret not in "".join(_code(nb)), f"{secret!r} in a code cell"


@pytest.mark.parametrize("nb", [p for p in NOTEBOOKS if "sweep" not in p.stem], ids=lambda p: p.stem)
def test_images_are_fingerprinted(nb):
    assert any("fingerprint(" in c for c in _code(nb)), "print a fingerprint so nbval notices changed pictures"


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


def test_execute_and_check_name_a_missing_path_before_any_work(tmp_path):
    from sdkit.notebook import check, execute

    with pytest.raises(FileNotFoundError, match="'nope.ipynb': no such notebook or folder"):
        execute(["nope.ipynb"])
    with pytest.raises(FileNotFoundError, match=r"no notebooks in \["):
        check([tmp_path])
    with pytest.raises(FileNotFoundError, match="sanitize='missing.cfg': no such file"):
        check([tmp_path], sanitize="missing.cfg")
