import os
import warnings

import numpy as np
import pytest

# Tests never reach the Hub: everything runs on models sdkit builds.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
warnings.filterwarnings("ignore", message=".*torchvision.*")


@pytest.fixture(scope="session")
def tiny_path():
    from sdkit.models.tiny import tiny_pipeline_path

    return tiny_pipeline_path("text-to-image")


@pytest.fixture(scope="session")
def tiny_inpaint_path():
    from sdkit.models.tiny import tiny_pipeline_path

    return tiny_pipeline_path("inpainting")


@pytest.fixture(scope="session")
def tiny_pipe():
    from sdkit.load.pipeline import load_pipeline

    return load_pipeline("sdkit:tiny")


@pytest.fixture(scope="module")
def inpaint_pipe():
    from sdkit.load.pipeline import load_pipeline

    return load_pipeline("sdkit:tiny-inpainting", "inpainting")


@pytest.fixture(scope="module")
def euler_a():
    from sdkit.load.pipeline import load_pipeline

    return load_pipeline("sdkit:tiny", scheduler="Euler a")


# Plain helpers shared by the search tests (import them: `from conftest import red, pixels`).


def red(images, prompts):
    """A scorer of the right signature: the mean red of each image (deterministic, no CLIP to load)."""
    from sdkit.results import Scores

    r = np.array([np.asarray(im, np.float32)[..., 0].mean() for im in images], np.float32)
    return Scores(logits=r, clip_score=r / 2.55, scorer="red")


def pixels(c):
    return np.asarray(c.image)


@pytest.fixture
def pickscore_in_cache(tmp_path, monkeypatch):
    """PickScore_v1 and its LAION processor, as a user's offline Hub cache would hold them (tiny CLIPs)."""
    import huggingface_hub.constants

    from sdkit.models.tiny import install_in_hub_cache
    from sdkit.models.tiny_clip import save_tiny_clip
    from sdkit.scoring.verifiers import LAION_VIT_H, PICKSCORE

    cache = tmp_path / "hub"
    install_in_hub_cache(save_tiny_clip(tmp_path / "pick", seed=5), PICKSCORE, cache)
    install_in_hub_cache(save_tiny_clip(tmp_path / "laion", seed=5), LAION_VIT_H, cache)
    for name, value in (("HF_HUB_OFFLINE", True), ("HF_HUB_CACHE", str(cache))):
        monkeypatch.setenv(name, "1" if value is True else value)
        monkeypatch.setattr(huggingface_hub.constants, name, value)
    return tmp_path / "pick"
