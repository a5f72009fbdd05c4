"""Scorers: data-parallel Flax CLIP across device counts, the PyTorch scorer, bad input, JAX memory."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sdkit.score import FlaxCLIPScorer, Scores, TorchCLIPScorer, load_scorer
from sdkit.tiny_clip import tiny_clip_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red circle", "a blue square on a white field", "a green triangle"]
N = 7  # not divisible by 2, 3, 4 or 8


def realistic_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(3 * x + seed) * 0.5 + 0.5, y, (x * y * seed) % 1], -1) * 255
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


def candidates():
    """N images, several prompts, each image with its own prompt (not in prompt-block order)."""
    images = [realistic_image(40 + 3 * i, 56 - 2 * i, seed=i) for i in range(N)]
    return images, [PROMPTS[(2 * i) % 3] for i in range(N)]


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip_path()


@pytest.fixture(scope="module")
def flax_scorer(tiny):
    import jax

    return FlaxCLIPScorer(tiny, devices=jax.devices()[:1], batch_size=2)  # unsharded reference


@pytest.fixture(scope="module")
def torch_scorer(tiny):
    return TorchCLIPScorer(tiny, device="cpu")


def torch_reference(path, images, prompts):
    """Plain transformers: each image through CLIPModel with its own prompt, one at a time."""
    from transformers import CLIPModel, CLIPTokenizer

    from sdkit.preprocess import ImageConfig, preprocess

    model, tokenizer = CLIPModel.from_pretrained(path).eval(), CLIPTokenizer.from_pretrained(path)
    out = []
    for image, prompt in zip(images, prompts):
        ids = tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        pixels = torch.from_numpy(preprocess([image], ImageConfig.from_pretrained(path)))
        with torch.no_grad():
            out.append(model(input_ids=ids["input_ids"], pixel_values=pixels).logits_per_image.item())
    return np.array(out, np.float32)


def hub_cache(root, repo_id, src, sha="0123456789abcdef0123456789abcdef01234567"):
    """Lay `src`'s files out as the Hub cache does: models--org--name/{refs/main, snapshots/<sha>/...}."""
    repo = os.path.join(root, "models--" + repo_id.replace("/", "--"))
    shutil.copytree(src, os.path.join(repo, "snapshots", sha))
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(sha)
    return root


# Run in a fresh process per device count: XLA_FLAGS must be set before JAX starts. The checkpoint
# is loaded by Hub id from an offline Hub cache, so these also cover HF_HUB_OFFLINE resolution.
CHILD = """
import json, os, sys, types
# sdkit/__init__ imports diffusers and torch; the scorer needs neither, and five children would pay
# for them. Register the package without running its __init__.
sys.modules["sdkit"] = types.ModuleType("sdkit")
sys.modules["sdkit"].__path__ = [os.path.join({repo!r}, "sdkit")]
from PIL import Image
from sdkit.score import FlaxCLIPScorer
from jax._src import xla_bridge
started_at_import = xla_bridge.backends_are_initialized()
import jax
images = [Image.open(os.path.join({data!r}, f"{{i}}.png")) for i in range({n})]
scorer = FlaxCLIPScorer("sdkit-test/tiny-clip", batch_size=2)
scores = scorer(images, {prompts!r})
assert "torch" not in sys.modules
print(json.dumps(dict(devices=len(scorer.devices), local=len(jax.local_devices()), path=scorer.path,
                      prealloc=os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"), started_at_import=started_at_import,
                      logits=scores.logits.tolist(), clip_score=scores.clip_score.tolist())))
"""


@pytest.fixture(scope="module")
def device_runs(tiny, tmp_path_factory):
    """Scores from child processes with 1, 2, 3, 4 and 8 JAX CPU devices, started together."""
    hub = hub_cache(str(tmp_path_factory.mktemp("hub")), "sdkit-test/tiny-clip", tiny)
    data = str(tmp_path_factory.mktemp("images"))
    images, prompts = candidates()
    for i, im in enumerate(images):
        im.save(os.path.join(data, f"{i}.png"))  # lossless: the children see the same pixels
    code = CHILD.format(repo=REPO, data=data, n=len(images), prompts=prompts)
    procs = {}
    for d in (1, 2, 3, 4, 8):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={d}", "HF_HUB_OFFLINE": "1",
               "HF_HUB_CACHE": hub, "JAX_PLATFORMS": "cpu"}
        env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
        procs[d] = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    for d, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        out[d] = json.loads(stdout.strip().splitlines()[-1])
    return out, hub


@pytest.mark.parametrize("d", [1, 2, 3, 4, 8])
def test_sharded_scores_identical_to_unsharded(device_runs, flax_scorer, d):
    runs, hub = device_runs
    run = runs[d]
    assert run["devices"] == run["local"] == d
    assert run["path"].startswith(hub)  # resolved through the offline Hub cache
    images, prompts = candidates()
    ref = flax_scorer(images, prompts)
    np.testing.assert_array_equal(np.array(run["logits"], np.float32), ref.logits)
    np.testing.assert_array_equal(np.array(run["clip_score"], np.float32), ref.clip_score)
    assert run["prealloc"] == "false" and not run["started_at_import"]  # set before JAX started, not by starting it


def test_each_image_scored_against_its_own_prompt(tiny, flax_scorer):
    images, prompts = candidates()
    np.testing.assert_allclose(flax_scorer(images, prompts).logits, torch_reference(tiny, images, prompts),
                               atol=1e-4, rtol=0)
    # And the order matters: shuffling prompts changes the scores.
    assert not np.allclose(flax_scorer(images, prompts[1:] + prompts[:1]).logits, flax_scorer(images, prompts).logits)


def test_flax_and_torch_scorers_agree(flax_scorer, torch_scorer):
    images, prompts = candidates()
    f, t = flax_scorer(images, prompts), torch_scorer(images, prompts)
    np.testing.assert_allclose(f.logits, t.logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(f.clip_score, t.clip_score, atol=1e-4, rtol=0)
    assert f.scorer.startswith("clip-flax:") and t.scorer.startswith("clip-torch:")
    assert np.ptp(f.logits) > 1


def test_scores_are_clip_score_and_logits(flax_scorer):
    images, prompts = candidates()
    s = flax_scorer(images, prompts)
    assert isinstance(s, Scores) and len(s) == N and s.logits.dtype == s.clip_score.dtype == np.float32
    cosine = s.logits / flax_scorer.logit_scale
    np.testing.assert_allclose(s.clip_score, np.maximum(100 * cosine, 0), atol=1e-4)
    assert (s.clip_score >= 0).all() and (s.logits < 0).any()  # the floor is exercised


def test_one_prompt_for_all_images_and_any_n(flax_scorer):
    images, _ = candidates()
    for n in (1, 2, 5):
        shared = flax_scorer(images[:n], "a red circle")
        per_image = flax_scorer(images[:n], ["a red circle"] * n)
        np.testing.assert_array_equal(shared.logits, per_image.logits)
        np.testing.assert_array_equal(shared.logits, flax_scorer(images, ["a red circle"]).logits[:n])


def test_text_encoded_once_per_prompt(tiny, monkeypatch):
    import jax

    scorer = FlaxCLIPScorer(tiny, devices=jax.devices()[:1])
    encoded = []
    original = scorer._encode_text
    monkeypatch.setattr(scorer, "_encode_text", lambda ids: (encoded.append(len(ids)), original(ids))[1])
    images, prompts = candidates()
    scorer(images, prompts)
    assert encoded == [3]  # 7 images, 3 distinct prompts, one batch
    scorer(images, prompts[::-1])
    assert encoded == [3]  # cached


@pytest.mark.parametrize("images,prompts,error,match", [
    ([], ["a"], ValueError, "no images"),
    ("3", ["a", "b"], ValueError, "got 2 prompts for 3 images"),
    ("3", [], ValueError, "got 0 prompts for 3 images"),
    ([np.zeros((8, 8, 3), np.uint8)], ["a"], TypeError, "images\\[0\\] is a ndarray"),
    ("1", [None], TypeError, "prompts\\[0\\] is a NoneType"),
])
def test_bad_input(flax_scorer, torch_scorer, images, prompts, error, match):
    if isinstance(images, str):
        images = [realistic_image(16, 16)] * int(images)
    for scorer in (flax_scorer, torch_scorer):
        with pytest.raises(error, match=match):
            scorer(images, prompts)


def test_bad_scorer_arguments(tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown scorer backend 'tf'.*flax.*torch"):
        load_scorer("tf", tiny)
    with pytest.raises(ValueError, match="unknown CLIP '/no/such/clip'"):
        load_scorer("torch", "/no/such/clip")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for backend in ("flax", "torch"):
        with pytest.raises(ValueError, match="not a CLIP"):
            load_scorer(backend, str(tmp_path))
    with pytest.raises(ValueError, match="dtype int8 is not supported"):
        FlaxCLIPScorer(tiny, dtype="int8")


def test_load_scorer(tiny):
    assert isinstance(load_scorer("torch", tiny, device="auto"), TorchCLIPScorer)
    scorer = load_scorer("flax", tiny, batch_size=3)
    assert isinstance(scorer, FlaxCLIPScorer) and scorer.batch_size == 3 and scorer.model_id == tiny


def test_long_prompts_truncated_with_warning(tiny, flax_scorer, torch_scorer):
    images, _ = candidates()
    long = " ".join(["a red circle and a blue square"] * 20)  # well over 77 tokens
    for scorer in (flax_scorer, torch_scorer):
        with pytest.warns(UserWarning, match="tokens, CLIP reads 77; scoring it truncated"):
            s = scorer(images[:2], long)
        np.testing.assert_allclose(s.logits, torch_reference(tiny, images[:2], [long] * 2), atol=1e-4, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flax_scorer(images[:1], "a short prompt")


def test_non_rgb_images_are_converted(flax_scorer):
    from transformers.image_transforms import convert_to_rgb  # the reference: alpha composited on white

    rgb = realistic_image(48, 40, seed=3)
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(np.linspace(0, 255, 48 * 40).reshape(48, 40).astype(np.uint8)))
    la = rgba.convert("LA")
    images = [rgb.convert("L"), rgb.convert("P"), rgb.convert("CMYK"), rgba, la, rgb.convert("I;16")]
    converted = flax_scorer(images, "a")
    expected = flax_scorer([convert_to_rgb(im, return_numpy=False) for im in images[:5]], "a")
    np.testing.assert_array_equal(converted.logits[:5], expected.logits)
    assert converted.logits[3] != flax_scorer([rgba.convert("RGB")], "a").logits[0]  # alpha is not just dropped
    assert np.isfinite(converted.logits).all()


def test_half_precision_params(tiny, flax_scorer):
    import jax.numpy as jnp

    scorer = FlaxCLIPScorer(tiny, dtype="bfloat16")
    assert jnp.asarray(scorer.params["text_projection"]["kernel"]).dtype == jnp.bfloat16
    assert scorer.logit_scale == pytest.approx(100.0, rel=1e-6)  # kept in fp32
    images, prompts = candidates()
    half, full = scorer(images, prompts), flax_scorer(images, prompts)
    assert np.isfinite(half.logits).all()
    np.testing.assert_allclose(half.logits, full.logits, atol=2.0)  # bf16: ~3 significant digits


def test_preallocation_env(monkeypatch):
    from jax._src import xla_bridge

    from sdkit import clip_flax

    class FakeGPU:
        platform = "gpu"

    for k in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_ALLOCATOR"):
        monkeypatch.delenv(k, raising=False)
    # JAX already running on a GPU: too late to change the allocator, so warn.
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
    monkeypatch.setattr("jax.devices", lambda: [FakeGPU()])
    with pytest.warns(RuntimeWarning, match="preallocation"):
        clip_flax.configure_jax_memory()
    # Not started yet: set it.
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    clip_flax.configure_jax_memory()
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    # The user's own choice wins, silently.
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip_flax.configure_jax_memory()
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"
