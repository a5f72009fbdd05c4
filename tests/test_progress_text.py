"""The progress bar's text form in notebooks: what a stored output shows, the same on every run."""

import importlib

import pytest


@pytest.fixture
def shown(monkeypatch):
    import IPython.display

    progress = importlib.import_module("sdkit.progress")
    out = []
    monkeypatch.setattr(progress, "_in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: out.append(obj["text/plain"]))
    return out


def test_notebook_progress_says_what_the_call_does_and_not_what_a_resume_found(tiny_pipe, tmp_path, shown):
    from sdkit import generate

    generate(tiny_pipe, ["a red circle", "a blue square"], n=2, seed=0, num_inference_steps=3, output_dir=tmp_path,
             run_id="r")
    generate(tiny_pipe, ["a red circle", "a blue square"], n=2, seed=0, num_inference_steps=3, output_dir=tmp_path,
             run_id="r")  # resumed: nothing left to do, same text
    assert shown == ["denoising 4 candidates × 3 steps"] * 2


def test_image_to_image_counts_the_steps_that_run(tiny_pipe, shown):
    from PIL import Image

    from sdkit.edit.tasks import img2img

    img2img(tiny_pipe, "a red circle", Image.new("RGB", (64, 64), "red"), strength=0.5, n=1, seed=0,
            num_inference_steps=6)
    assert shown == ["denoising 1 candidate × 3 steps"]
