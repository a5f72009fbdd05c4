"""sdkit.scoring.scorers and its backends (flax.scorer, torch_clip): data-parallel Flax CLIP across device counts, the PyTorch scorer, bad input, JAX memory."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sdkit.errors import ModelNotAvailable
from sdkit.models.tiny import install_in_hub_cache
from sdkit.models.tiny_clip import tiny_clip_path
from sdkit.results import Scores
from sdkit.scoring.flax.scorer import FlaxCLIPScorer
from sdkit.scoring.scorers import load_scorer
from sdkit.scoring.torch_clip import TorchCLIPScorer

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

    from sdkit.scoring.preprocess import ImageConfig, preprocess

    model, tokenizer = CLIPModel.from_pretrained(path).eval(), CLIPTokenizer.from_pretrained(path)
    out = []
    for image, prompt in zip(images, prompts):
        ids = tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        pixels = torch.from_numpy(preprocess([image], ImageConfig.from_pretrained(path)))
        with torch.no_grad():
            out.append(model(input_ids=ids["input_ids"], pixel_values=pixels).logits_per_image.item())
    return np.array(out, np.float32)


# Run in a fresh process per device count: XLA_FLAGS must be set before JAX starts. The checkpoint
# is loaded by Hub id from an offline Hub cache, so these also cover HF_HUB_OFFLINE resolution.
CHILD = """
import json, os, sys
sys.path.insert(0, {repo!r})
from PIL import Image
from sdkit.scoring.flax.scorer import FlaxCLIPScorer
from jax._src import xla_bridge
started_at_import = xla_bridge.backends_are_initialized()
import jax
images = [Image.open(os.path.join({data!r}, f"{{i}}.png")) for i in range({n})]
scorer = FlaxCLIPScorer("sdkit-test/tiny-clip", batch_size=2)
scores = scorer(images, {prompts!r})
assert "torch" not in sys.modules  # the Flax scorer needs no torch (`import sdkit` is light)
print(json.dumps(dict(devices=len(scorer.devices), local=len(jax.local_devices()), path=scorer.path,
                      prealloc=os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"), started_at_import=started_at_import,
                      logits=scores.logits.tolist(), clip_score=scores.clip_score.tolist())))
"""


@pytest.fixture(scope="module")
def device_runs(tiny, tmp_path_factory):
    """Scores from child processes with 1, 2, 3, 4 and 8 JAX CPU devices, started together."""
    hub = str(tmp_path_factory.mktemp("hub"))
    install_in_hub_cache(tiny, "sdkit-test/tiny-clip", hub)
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
    with pytest.raises(ValueError, match=r"unknown scorer 'tf'; expected one of \['aesthetic', 'clip', 'hpsv2', "
                                         r"'pickscore', 'toy-reward'\] \(or a backend \['auto', 'flax', 'torch'\]"):
        load_scorer("tf", tiny)
    with pytest.raises(ValueError, match="unknown scorer backend 'tf'.*flax.*torch"):
        load_scorer("clip", tiny, backend="tf")
    with pytest.raises(ModelNotAvailable, match="unknown CLIP '/no/such/clip'"):
        load_scorer("torch", "/no/such/clip")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for backend in ("flax", "torch"):
        with pytest.raises(ModelNotAvailable, match="not a CLIP"):
            load_scorer(backend, str(tmp_path))
    with pytest.raises(ValueError, match="dtype int8 is not supported"):
        FlaxCLIPScorer(tiny, dtype="int8")


def test_load_scorer(tiny):
    assert isinstance(load_scorer("torch", tiny, device="auto"), TorchCLIPScorer)
    scorer = load_scorer("flax", tiny, batch_size=3)
    assert isinstance(scorer, FlaxCLIPScorer) and scorer.batch_size == 3 and scorer.model_id == tiny


def test_scorer_for_is_the_one_resolver(tiny, monkeypatch):
    """None is "no scoring", a name loads that backend once with the CLIP beside the model, an object is itself."""
    import sdkit.ranking
    import sdkit.scoring.scorers as scorers
    from sdkit.scoring.scorers import scorer_for

    assert sdkit.ranking.scorer_for is scorer_for  # the old import path is the same function
    assert scorer_for(None, "sdkit:tiny") is None and scorer_for(None, "sdkit:tiny", tiny) is None
    mine = lambda images, prompts: None  # noqa: E731
    assert scorer_for(mine, "sdkit:tiny") is mine
    loaded = []
    monkeypatch.setattr(scorers, "get_scorer", lambda backend, model: loaded.append((backend, model)) or backend)
    assert scorer_for("torch", "sdkit:tiny") == "torch" and [(b, str(m)) for b, m in loaded] == [("torch", str(tiny))]  # clip_for
    assert scorer_for("flax", "sdkit:tiny", "other/clip") == "flax" and loaded[-1] == ("flax", "other/clip")
    with pytest.raises(ValueError, match="scorer=None"):
        sdkit.ranking.rerank([object()], None)


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
    # A logit is logit_scale (100) x a cosine in [-1, 1]. bf16 keeps 8 significand bits (unit roundoff 2^-9), so
    # rounding the weights and every activation moves a cosine by a few 2^-9: measured here at most 0.28 logits
    # (0.0028 in cosine, logits -11...41), and at most 0.46 over 60 such images. The bound is four unit roundoffs
    # of the cosine, 100 * 2^-7 = 0.78 logits. A real bug moves logits by far more: another image for a prompt
    # (swapped), a rotated prompt list, a mirrored, greyed or stretched image each move some logit by 14 to 44,
    # and pooling the text one token before EOS by 71.
    atol = scorer.logit_scale * 2.0**-7
    assert atol < 0.8
    np.testing.assert_allclose(half.logits, full.logits, rtol=0, atol=atol)


def test_preallocation_env(monkeypatch):
    from jax._src import xla_bridge

    from sdkit.scoring.flax import memory

    class FakeGPU:
        platform = "gpu"

    for k in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_ALLOCATOR"):
        monkeypatch.delenv(k, raising=False)
    # JAX already running on a GPU: too late to change the allocator, so warn.
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
    monkeypatch.setattr("jax.devices", lambda: [FakeGPU()])
    with pytest.warns(RuntimeWarning, match="preallocation"):
        memory.configure_jax_memory()
    # Not started yet: set it.
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    memory.configure_jax_memory()
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    # The user's own choice wins, silently.
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        memory.configure_jax_memory()
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"


# --- tensor batches (diffusers' output_type="pt"): no PIL round trip, the same scores -------------------------


def pipeline_output(n=5, size=(64, 64), seed=0):
    """A float batch in [0, 1] as diffusers returns it, and the PIL images its own `numpy_to_pil` makes of it."""
    from diffusers.image_processor import VaeImageProcessor

    rng = np.random.default_rng(seed)
    smooth = np.stack([np.asarray(realistic_image(*size, seed=seed + i)) for i in range(n)]) / 255.0
    x = torch.from_numpy(np.clip(smooth + rng.normal(0, 0.02, smooth.shape), 0, 1).astype(np.float32))
    x = x.permute(0, 3, 1, 2).contiguous()
    return x, VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(x))


def test_tensor_batch_scores_equal_pil_scores(flax_scorer, torch_scorer, monkeypatch):
    """The bound is zero: the pixels fed to CLIP are identical, so each backend's scores are too."""
    _, prompts = candidates()
    x, pils = pipeline_output(N)
    for scorer in (torch_scorer, flax_scorer):
        np.testing.assert_array_equal(scorer(x, prompts).logits, scorer(pils, prompts).logits)
        half = x.half()  # an fp16 pipeline's output: its PIL images are made from the same fp16 values
        from diffusers.image_processor import VaeImageProcessor

        half_pils = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(half))
        np.testing.assert_array_equal(scorer(half, prompts).logits, scorer(half_pils, prompts).logits)
    assert flax_scorer.handover(x) == "numpy" and flax_scorer.last_transfer == "pil"
    # The DLPack route (taken for CUDA tensors when JAX is on the GPU) runs on the CPU too: force it.
    monkeypatch.setattr(FlaxCLIPScorer, "handover", lambda self, pixels: "dlpack")
    np.testing.assert_array_equal(flax_scorer(x, prompts).logits, flax_scorer(pils, prompts).logits)
    flax_scorer(x, prompts)
    assert flax_scorer.last_transfer == "dlpack"


DLPACK_CHILD = """
import sys
sys.path.insert(0, {tests!r})
import jax, numpy as np
from sdkit.scoring.flax.scorer import FlaxCLIPScorer
from test_scorers import candidates, pipeline_output
scorer = FlaxCLIPScorer({tiny!r}, batch_size=2)
assert len(scorer.devices) == 2
scorer.handover = lambda pixels: "dlpack"
x, pils = pipeline_output(7)
_, prompts = candidates()
np.testing.assert_array_equal(scorer(x, prompts).logits, scorer(pils, prompts).logits)
assert scorer.last_transfer == "pil"
scorer(x, prompts)
assert scorer.last_transfer == "dlpack"
print("ok")
"""


def test_dlpack_route_spreads_over_the_device_mesh(tiny):
    """DLPack gives an array on one device; the scorer reshards it over its mesh (2 JAX CPU devices here)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    code = DLPACK_CHILD.format(tests=os.path.join(REPO, "tests"), tiny=str(tiny))
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-3000:]


@pytest.mark.parametrize("images,error,match", [
    (torch.zeros(3, 32, 32), ValueError, r"shape \(3, 32, 32\); expected \(N, 3, H, W\)"),
    (torch.zeros(2, 4, 32, 32), ValueError, r"shape \(2, 4, 32, 32\)"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError, "dtype torch.uint8; expected a float tensor"),
    (torch.zeros(0, 3, 32, 32), ValueError, "no images"),
    (torch.zeros(3, 3, 32, 32), ValueError, "got 2 prompts for 3 images"),
])
def test_bad_tensor_input(flax_scorer, torch_scorer, images, error, match):
    for scorer in (flax_scorer, torch_scorer):
        with pytest.raises(error, match=match):
            scorer(images, ["a", "b"])


# --- which scorer on which machine: JAX without a GPU next to a CUDA torch ----------------------------------------


@pytest.fixture
def machine(monkeypatch):
    """Set what JAX and torch see: machine(jax_gpu=False, torch="cuda", cuda="12.8")."""
    from sdkit.scoring import scorers as score

    def set_(jax_gpu: bool, torch_gpu, cuda="12.8"):
        monkeypatch.setattr(score, "jax_has_accelerator", lambda: jax_gpu)
        monkeypatch.setattr(score, "torch_accelerator", lambda: torch_gpu)
        monkeypatch.setattr(torch.version, "cuda", cuda)
        monkeypatch.setattr(score, "_warned_jax_cpu", False)
    return set_


def test_flax_with_cpu_only_jax_next_to_cuda_torch_warns_once_and_stays_flax(tiny, machine):
    machine(jax_gpu=False, torch_gpu="cuda")
    with pytest.warns(RuntimeWarning, match=r'sees no GPU.*CUDA 12\.8.*runs on the CPU.*pip install -U "jax\[cuda12\]"'):
        scorer = load_scorer("flax", tiny)
    assert isinstance(scorer, FlaxCLIPScorer) and scorer.devices[0].platform == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        assert isinstance(load_scorer("flax", tiny), FlaxCLIPScorer)


def test_auto_falls_back_to_torch_only_when_jax_lacks_the_gpu(tiny, machine):
    machine(jax_gpu=False, torch_gpu="cuda", cuda="13.0")
    with pytest.warns(RuntimeWarning, match=r"'auto'\) uses the PyTorch scorer on the GPU.*jax\[cuda13\]"):
        assert isinstance(load_scorer("auto", tiny), TorchCLIPScorer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning in any of these
        for jax_gpu, torch_gpu, expected in [(True, "cuda", FlaxCLIPScorer), (False, None, FlaxCLIPScorer),
                                             (False, "mps", TorchCLIPScorer), (True, None, FlaxCLIPScorer)]:
            machine(jax_gpu=jax_gpu, torch_gpu=torch_gpu)
            assert type(load_scorer("auto", tiny)) is expected, (jax_gpu, torch_gpu)
        machine(jax_gpu=False, torch_gpu="cuda")
        import jax

        # The user chose where to run: no second-guessing.
        assert type(load_scorer("flax", tiny, devices=jax.devices())) is FlaxCLIPScorer
        assert type(load_scorer("auto", tiny, device="cpu")) is TorchCLIPScorer
