"""sdkit.scoring.verifiers and sdkit.scoring.convert: PickScore, HPS v2.1 and the LAION aesthetic predictor on tiny
random models in their Hub / official layouts, each on both backends against transformers/torch computed directly."""

import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sdkit.errors import ModelNotAvailable
from sdkit.models.tiny_clip import save_tiny_clip
from sdkit.scoring.scorers import load_scorer

ATOL = 1e-4
PROMPTS = ["a red circle", "a blue square on a white field", "a green triangle"]
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "preprocessor_config.json")
GELU_14 = dict(text_config={"hidden_act": "gelu"}, vision_config={"hidden_act": "gelu", "patch_size": 7, "image_size": 28})


def realistic_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(3 * x + seed) * 0.5 + 0.5, y, (x * y * seed) % 1], -1) * 255
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


def candidates(n=5):
    return [realistic_image(40 + 3 * i, 56 - 2 * i, seed=i) for i in range(n)], [PROMPTS[i % 3] for i in range(n)]


def single_device():
    import jax

    return {"devices": jax.devices()[:1]}


BACKENDS = [("torch", {"device": "cpu"}), ("flax", {})]


@pytest.fixture(scope="module")
def pickscore_layout(tmp_path_factory):
    """yuvalkirstain/PickScore_v1's layout (a CLIPModel: config.json + model.safetensors, read with another repo's
    processor) and laion/CLIP-ViT-H-14-laion2B-s32B-b79K's processor files, both tiny."""
    root = tmp_path_factory.mktemp("pickscore")
    model = save_tiny_clip(root / "PickScore_v1", seed=5, **GELU_14)
    os.makedirs(root / "processor")
    for f in PROCESSOR_FILES:
        if os.path.exists(os.path.join(model, f)):
            shutil.move(os.path.join(model, f), root / "processor" / f)
    return model, str(root / "processor")


def test_pickscore_as_its_authors_compute_it(pickscore_layout):
    """The PickScore_v1 model card's recipe (AutoProcessor + AutoModel, logit_scale.exp() * cosine) on both backends."""
    from transformers import AutoModel, CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    model_dir, processor_dir = pickscore_layout
    images, prompts = candidates()
    # The tiny processor folder has no processor_config.json, so AutoProcessor would give the tokenizer alone.
    processor = CLIPProcessor(image_processor=CLIPImageProcessor.from_pretrained(processor_dir),
                              tokenizer=CLIPTokenizer.from_pretrained(processor_dir))
    model = AutoModel.from_pretrained(model_dir).eval()
    ref = []
    with torch.no_grad():
        for image, prompt in zip(images, prompts):
            image_embs = model.get_image_features(**processor(images=[image], return_tensors="pt")).pooler_output
            image_embs = image_embs / image_embs.norm(dim=-1, keepdim=True)
            text = processor(text=[prompt], padding=True, truncation=True, max_length=77, return_tensors="pt")
            text_embs = model.get_text_features(**text).pooler_output
            text_embs = text_embs / text_embs.norm(dim=-1, keepdim=True)
            ref.append((model.logit_scale.exp() * (text_embs @ image_embs.T))[0, 0].item())
    for backend, kwargs in BACKENDS:
        scorer = load_scorer("pickscore", {"model": model_dir, "processor": processor_dir}, backend=backend, **kwargs)
        s = scorer(images, prompts)
        np.testing.assert_allclose(s.logits, ref, atol=ATOL, rtol=0)
        np.testing.assert_array_equal(s.clip_score, s.logits)  # PickScore is shown as it is
        assert s.scorer == f"pickscore-{backend}:{model_dir}"
    assert np.ptp(ref) > 1


def test_pickscore_without_its_processor_is_refused_before_loading(pickscore_layout, monkeypatch):
    import sdkit.scoring.torch_clip as torch_clip

    model_dir, _ = pickscore_layout
    monkeypatch.setattr(torch_clip, "TorchCLIPScorer", lambda *a, **k: pytest.fail("loaded weights first"))
    with pytest.raises(ValueError, match=r"pickscore scorer of .*PickScore_v1.*no processor.*preprocessor_config"
                                         r".*pass processor="):
        load_scorer("pickscore", {"model": model_dir, "processor": None}, backend="torch")
    with pytest.raises(ModelNotAvailable, match="unknown processor '/no/such/processor'"):
        load_scorer("pickscore", {"model": model_dir, "processor": "/no/such/processor"}, backend="torch")


# --- HPS v2.1: an open_clip ViT checkpoint, converted --------------------------------------------------------------

TINY_OPEN_CLIP = dict(embed_dim=24, vision_width=48, vision_layers=2, patch=7, image=28, text_width=32, text_layers=2,
                      heads=4, context=77)


def open_clip_state(vocab: int, seed=0) -> dict:
    """A random open_clip CLIP state dict (ViT image tower, `custom_text=False`): key names and shapes written from
    open_clip's transformer.py (VisionTransformer, Transformer, ResidualAttentionBlock) and model.py (CLIP)."""
    c, g = TINY_OPEN_CLIP, torch.Generator().manual_seed(seed)
    r = lambda *shape, s=1.0: torch.randn(*shape, generator=g) * s  # noqa: E731
    state = {}

    def tower(prefix, width):
        for i in range(c["vision_layers"] if prefix else c["text_layers"]):
            p = f"{prefix}transformer.resblocks.{i}."
            for ln in ("ln_1", "ln_2"):
                state[p + ln + ".weight"], state[p + ln + ".bias"] = 1 + r(width, s=0.1), r(width, s=0.1)
            state[p + "attn.in_proj_weight"], state[p + "attn.in_proj_bias"] = r(3 * width, width, s=width**-0.5), r(3 * width, s=0.1)
            state[p + "attn.out_proj.weight"], state[p + "attn.out_proj.bias"] = r(width, width, s=width**-0.5), r(width, s=0.1)
            state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"] = r(4 * width, width, s=width**-0.5), r(4 * width, s=0.1)
            state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"] = r(width, 4 * width, s=(4 * width)**-0.5), r(width, s=0.1)

    w, grid = c["vision_width"], c["image"] // c["patch"]
    state["visual.conv1.weight"] = r(w, 3, c["patch"], c["patch"], s=(3 * c["patch"] ** 2) ** -0.5)
    state["visual.class_embedding"] = r(w)
    state["visual.positional_embedding"] = r(grid * grid + 1, w, s=0.5)
    for ln in ("ln_pre", "ln_post"):
        state[f"visual.{ln}.weight"], state[f"visual.{ln}.bias"] = 1 + r(w, s=0.1), r(w, s=0.1)
    tower("visual.", w)
    state["visual.proj"] = r(w, c["embed_dim"], s=w**-0.5)
    t = c["text_width"]
    state["token_embedding.weight"] = r(vocab, t, s=0.5)
    state["positional_embedding"] = r(c["context"], t, s=0.5)
    tower("", t)
    state["ln_final.weight"], state["ln_final.bias"] = 1 + r(t, s=0.1), r(t, s=0.1)
    state["text_projection"] = r(t, c["embed_dim"], s=t**-0.5)
    state["logit_scale"] = torch.tensor(float(np.log(100.0)))
    state["attn_mask"] = torch.full((c["context"], c["context"]), float("-inf")).triu_(1)  # older open_clip saved it
    return state


def open_clip_forward(state, input_ids, pixel_values):
    """open_clip's encode_image / encode_text (normalised), from a state dict: torch's own nn.MultiheadAttention
    reads the packed in_proj weights as open_clip does."""
    c = TINY_OPEN_CLIP

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"])

    def transformer(prefix, x, layers, mask=None):
        for i in range(layers):
            p = f"{prefix}transformer.resblocks.{i}."
            attn = torch.nn.MultiheadAttention(x.shape[-1], c["heads"], batch_first=True)
            attn.load_state_dict({k[len(p) + 5:]: v for k, v in state.items() if k.startswith(p + "attn.")})
            h = ln(x, p + "ln_1")
            x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
            h = F.gelu(F.linear(ln(x, p + "ln_2"), state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"]))
            x = x + F.linear(h, state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
        return x

    with torch.no_grad():
        x = F.conv2d(pixel_values, state["visual.conv1.weight"], stride=c["patch"]).flatten(2).transpose(1, 2)
        cls = state["visual.class_embedding"].expand(len(x), 1, -1)
        x = ln(torch.cat([cls, x], 1) + state["visual.positional_embedding"], "visual.ln_pre")
        x = ln(transformer("visual.", x, c["vision_layers"])[:, 0], "visual.ln_post") @ state["visual.proj"]
        image = F.normalize(x, dim=-1)
        mask = torch.full((input_ids.shape[1],) * 2, float("-inf")).triu_(1)
        t = state["token_embedding.weight"][input_ids] + state["positional_embedding"][: input_ids.shape[1]]
        t = ln(transformer("", t, c["text_layers"], mask), "ln_final")
        text = F.normalize(t[torch.arange(len(t)), input_ids.argmax(-1)] @ state["text_projection"], dim=-1)
    return image, text


def tiny_open_clip_config(vocab: int, eos: int) -> dict:
    c = TINY_OPEN_CLIP
    return dict(projection_dim=c["embed_dim"],
                text_config=dict(hidden_size=c["text_width"], intermediate_size=4 * c["text_width"],
                                 num_hidden_layers=c["text_layers"], num_attention_heads=c["heads"], hidden_act="gelu",
                                 max_position_embeddings=c["context"], vocab_size=vocab, eos_token_id=eos,
                                 bos_token_id=eos - 1, pad_token_id=eos),
                vision_config=dict(hidden_size=c["vision_width"], intermediate_size=4 * c["vision_width"],
                                   num_hidden_layers=c["vision_layers"], num_attention_heads=c["heads"],
                                   hidden_act="gelu", image_size=c["image"], patch_size=c["patch"]))


@pytest.fixture(scope="module")
def hps(tmp_path_factory, pickscore_layout):
    """HPS_v2.1_compressed.pt's layout ({"state_dict": open_clip's, "module."-prefixed}), tiny, and its conversion."""
    from transformers import CLIPTokenizer

    processor = pickscore_layout[1]
    tokenizer = CLIPTokenizer.from_pretrained(processor)
    assert tokenizer.eos_token_id == len(tokenizer) - 1  # open_clip pools at argmax(ids): EOS is the largest id
    state = open_clip_state(len(tokenizer))
    root = tmp_path_factory.mktemp("hps")
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, root / "HPS_v2.1.pt")
    from sdkit.scoring.convert import convert_open_clip

    out = convert_open_clip(root / "HPS_v2.1.pt", root / "hpsv2.1",
                            tiny_open_clip_config(len(tokenizer), tokenizer.eos_token_id))
    return state, str(out), processor, tokenizer


def open_clip_reference(hps, prompts):
    """The candidates' pixels, the prompts' ids, and open_clip's own (image, text) embeddings of them."""
    from sdkit.scoring.preprocess import ImageConfig, preprocess

    state, _, processor, tokenizer = hps
    images, _ = candidates()
    pixels = torch.from_numpy(preprocess(images, ImageConfig.from_pretrained(processor)))
    ids = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    return (pixels, ids, *open_clip_forward(state, ids, pixels))


def test_open_clip_conversion_gives_open_clips_embeddings(hps):
    from transformers import CLIPModel

    folder = hps[1]
    pixels, ids, ref_image, ref_text = open_clip_reference(hps, PROMPTS)
    model = CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        text = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
    np.testing.assert_allclose(image.numpy(), ref_image.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(text.numpy(), ref_text.numpy(), atol=ATOL, rtol=0)
    assert float(model.logit_scale) == pytest.approx(np.log(100.0))
    assert (ref_image @ ref_text.T).std() > 0.05  # not vacuous


def test_hpsv2_is_the_cosine_on_both_backends(hps):
    _, folder, processor, _ = hps
    images, prompts = candidates()
    _, _, ref_image, ref_text = open_clip_reference(hps, prompts)
    ref = (ref_image * ref_text).sum(-1).numpy()  # HPSv2's diagonal of image_features @ text_features.T
    for backend, kwargs in BACKENDS:
        s = load_scorer("hpsv2", {"model": folder, "processor": processor}, backend=backend, **kwargs)(images, prompts)
        np.testing.assert_allclose(s.logits, ref, atol=ATOL, rtol=0)
        np.testing.assert_allclose(s.clip_score, 100 * ref, atol=100 * ATOL, rtol=0)


def test_open_clip_conversion_refuses_what_it_cannot_map(tmp_path, hps):
    from sdkit.scoring.convert import convert_open_clip, open_clip_to_transformers

    state = dict(hps[0])
    with pytest.raises(ValueError, match=r"'transformer.resblocks.0.ls_1.gamma' has no CLIPModel counterpart"):
        open_clip_to_transformers({**state, "transformer.resblocks.0.ls_1.gamma": torch.ones(3)})
    with pytest.raises(ValueError, match=r"'visual.attn_pool.query' has no CLIPModel counterpart"):
        open_clip_to_transformers({**state, "visual.attn_pool.query": torch.ones(3)})
    torch.save(state, tmp_path / "vit_h.pt")
    with pytest.raises(ValueError, match=r"does not fit the CLIP config.*wrong shapes"):
        convert_open_clip(tmp_path / "vit_h.pt", tmp_path / "out")  # tiny weights, ViT-H-14's config


def test_hpsv2_without_a_converted_checkpoint_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("SDKIT_CACHE", str(tmp_path))
    with pytest.raises(ModelNotAvailable, match=r"no converted HPS v2.1.*python -m sdkit.scoring.convert hpsv2"):
        load_scorer("hpsv2", backend="torch")


# --- the LAION aesthetic predictor v2 --------------------------------------------------------------------------------


def laion_mlp(width: int, seed=0):
    """improved-aesthetic-predictor's MLP (simple_inference.py), its input width `width` (768 for ViT-L/14)."""
    torch.manual_seed(seed)
    layers = torch.nn.Sequential(torch.nn.Linear(width, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                                 torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                                 torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))
    mlp = torch.nn.Module()
    mlp.layers = layers  # its state dict: layers.0.weight, ... as the official .pth
    return mlp.eval()


@pytest.fixture(scope="module")
def aesthetic_layout(tmp_path_factory):
    """A tiny CLIP (openai/clip-vit-large-patch14's layout) and the predictor's .pth converted to safetensors."""
    from sdkit.scoring.convert import convert_aesthetic

    root = tmp_path_factory.mktemp("aesthetic")
    clip = save_tiny_clip(root / "clip", seed=7)
    mlp = laion_mlp(16)
    torch.save(mlp.state_dict(), root / "sac+logos+ava1-l14-linearMSE.pth")
    head = convert_aesthetic(root / "sac+logos+ava1-l14-linearMSE.pth", root / "aesthetic.safetensors")
    return clip, str(head), mlp


def test_aesthetic_is_laions_mlp_on_normalised_clip_image_embeddings(aesthetic_layout):
    from transformers import CLIPModel

    from sdkit.scoring.preprocess import ImageConfig, preprocess

    clip, head, mlp = aesthetic_layout
    images, prompts = candidates()
    model = CLIPModel.from_pretrained(clip).eval()
    with torch.no_grad():
        e = model.get_image_features(pixel_values=torch.from_numpy(preprocess(images, ImageConfig.from_pretrained(clip))))
        ref = mlp.layers(F.normalize(e.pooler_output, dim=-1))[:, 0].numpy()
    for backend, kwargs in BACKENDS:
        scorer = load_scorer("aesthetic", {"model": clip, "head": head}, backend=backend, **kwargs)
        s = scorer(images, prompts)
        np.testing.assert_allclose(s.logits, ref, atol=ATOL, rtol=0)
        np.testing.assert_array_equal(scorer(images, "anything else").logits, s.logits)  # prompt-independent
        assert s.scorer == f"aesthetic-{backend}:{clip}+aesthetic.safetensors"
    assert np.ptp(ref) > 1e-3


SHARDED_CHILD = """
import json, sys
import jax
import numpy as np
sys.path.insert(0, {tests!r})
from test_verifiers import candidates
from sdkit.scoring.scorers import load_scorer

images, prompts = candidates(7)  # 7 over 3 devices: the last shard padded
out = {{"local": len(jax.local_devices())}}
for name, model, opts in {cases!r}:
    every = load_scorer(name, model, backend="flax", **opts)
    one = load_scorer(name, model, backend="flax", devices=jax.devices()[:1], **opts)
    clip = getattr(every, "clip", every)  # aesthetic: the head on its CLIP's image embeddings
    out[name] = dict(devices=len(clip.devices), every=every(images, prompts).logits.tolist(),
                     one=one(images, prompts).logits.tolist())
print(json.dumps(out))
"""


def test_every_verifier_is_sharded_over_all_jax_devices(aesthetic_layout, pickscore_layout):
    """PickScore and the aesthetic head on 3 JAX CPU devices: sharded over all of them, with the scores of one."""
    import json
    import subprocess
    import sys

    clip, head, _ = aesthetic_layout
    pick, processor = pickscore_layout
    cases = [("aesthetic", {"model": clip, "head": head}, {}), ("pickscore", pick, {"processor": processor})]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=3", "JAX_PLATFORMS": "cpu"}
    code = SHARDED_CHILD.format(tests=os.path.join(repo, "tests"), cases=cases)
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=repo, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["local"] == 3
    for name, *_ in cases:
        assert out[name]["devices"] == 3, name
        np.testing.assert_array_equal(out[name]["every"], out[name]["one"], err_msg=name)
        assert np.ptp(out[name]["every"]) > 0, name  # scores that differ: the comparison means something


def test_aesthetic_refuses_bad_models_and_heads_before_loading(aesthetic_layout, tmp_path):
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    clip, head, mlp = aesthetic_layout
    text_only = tmp_path / "text-only"
    CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2,
                                 vocab_size=100)).save_pretrained(text_only)
    with pytest.raises(ValueError, match=r"aesthetic scores images, but .*text-only.* has no image tower "
                                         r"\(model_type 'clip_text_model'\).*openai/clip-vit-large-patch14"):
        load_scorer("aesthetic", {"model": str(text_only), "head": head}, backend="torch")
    wide = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in laion_mlp(768).state_dict().items()}, wide)
    with pytest.raises(ValueError, match=r"reads 768-wide image embeddings, but CLIP .* gives 16"):
        load_scorer("aesthetic", {"model": clip, "head": str(wide)}, backend="torch")
    with pytest.raises(ValueError, match=r"safetensors only; convert the .pth once"):
        load_scorer("aesthetic", {"model": clip, "head": str(tmp_path / "x.pth")}, backend="torch")
    save_file({"layers.0.weight": torch.ones(2, 16)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"are not the LAION predictor v2's"):
        load_scorer("aesthetic", {"model": clip, "head": str(tmp_path / "other.safetensors")}, backend="torch")


def test_converters_unpickle_weights_only(tmp_path):
    """A pickle that would run code is refused by torch.load(weights_only=True), not executed."""
    from sdkit.scoring.convert import convert_aesthetic

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"layers.0.weight": Boom()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        convert_aesthetic(tmp_path / "evil.pth", tmp_path / "out.safetensors")
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out.safetensors").exists()
