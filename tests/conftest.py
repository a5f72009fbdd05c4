import os
import warnings

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
