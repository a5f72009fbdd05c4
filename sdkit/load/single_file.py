"""Single-file checkpoints: one `.safetensors` file in the original (LDM / A1111 / ComfyUI) key layout.

    load_pipeline("~/models/dreamshaper_8.safetensors")                          # configs from the HF cache
    load_pipeline("~/models/model.safetensors", config="path/to/diffusers-folder")  # or from where you say

What the file is comes from its keys and shapes (`safetensors.safe_open` reads the header, no weights):
SD 1.x, SD 2.x, SDXL base, refiner and inpainting files load; a LoRA, an embedding, SD3, Flux or a video model
is refused by name. A file holds weights only: the configs that describe it (layer sizes, scheduler, tokenizer)
come from `config=` (a diffusers folder or Hub id), else from the Hub repo diffusers pairs with the file's kind
(`DIFFUSERS_DEFAULT_PIPELINE_PATHS`), found in the local Hugging Face cache or downloaded (configs only, a few
kB) when the Hub can be reached. diffusers' `from_single_file` then converts the weights. Pickle checkpoints
(.ckpt, .pt, .bin, .pth) are refused: unpickling runs arbitrary code; `convert_to_safetensors` converts one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path

from sdkit.errors import ModelNotAvailable
from sdkit.load.hub import PICKLE_SUFFIXES, hub_errors, looks_like_path

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES  # what names a file rather than a folder or a Hub id
UNET = "model.diffusion_model."
# diffusers' name for a kind -> (sdkit's family, words for people). The family picks the pipeline class.
KINDS = {
    "v1": ("sd", "a Stable Diffusion 1.x checkpoint"),
    "inpainting": ("sd", "a Stable Diffusion 1.x inpainting checkpoint"),
    "v2": ("sd", "a Stable Diffusion 2.x checkpoint"),
    "inpainting_v2": ("sd", "a Stable Diffusion 2.x inpainting checkpoint"),
    "xl_base": ("sdxl", "an SDXL base checkpoint"),
    "xl_inpaint": ("sdxl", "an SDXL inpainting checkpoint"),
    "xl_refiner": ("sdxl-refiner", "an SDXL refiner checkpoint"),
}
SUPPORTED = ("single-file Stable Diffusion 1.x, 2.x and SDXL (base, refiner, inpainting) checkpoints in the "
             "original layout, as .safetensors")
CONFIG_FILES = ["*.json", "*/*.json", "*.txt", "*/*.txt", "*/*.model"]  # what diffusers reads besides weights
# One line that turns a pickle checkpoint into safetensors, for the error that refuses it.
CONVERT = "python -c \"from sdkit.load.single_file import convert_to_safetensors as c; c('{path}')\""


@dataclasses.dataclass(frozen=True)
class SingleFile:
    """A checked single-file checkpoint and the diffusers folder whose configs describe it."""

    path: Path
    model_type: str  # diffusers' name for its kind: "v1", "v2", "xl_base", "xl_refiner", "inpainting", ...
    family: str  # "sd", "sdxl" or "sdxl-refiner" (`sdkit.load.kinds`)
    in_channels: int  # 4, or 9 for inpainting
    context: int | None  # the width of the text embedding the UNet attends to (768 SD 1.x, 1024 SD 2.x, 2048 SDXL)
    unet_parameters: int
    config: Path | None = None  # local folder with model_index.json and each component's config

    @property
    def key(self) -> tuple:
        """What the pipeline cache keys on: the file as it is now (replaced in place: another key) and its configs."""
        stat = self.path.stat()
        return (str(self.path.resolve()), stat.st_size, stat.st_mtime_ns, str(self.config))


def is_single_file(model: str) -> bool:
    """`model` names a file: an existing one, or a name with a checkpoint's suffix (never taken for a Hub id)."""
    return model.lower().endswith(SUFFIXES) or Path(model).expanduser().is_file()


def shapes_of(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the safetensors header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise ModelNotAvailable(f"{str(path)!r} is not a readable .safetensors file ({type(e).__name__}: {e})") from None


def _refuse(path: Path, what: str, hint: str = "") -> ModelNotAvailable:
    return ModelNotAvailable(f"{str(path)!r} is {what}, not a model sdkit can load; sdkit loads {SUPPORTED}, "
                             f"and diffusers folders or Hub ids{hint}")


def _not_a_model(path: Path, keys) -> ModelNotAvailable | None:
    """The refusal for adapters and embeddings, which diffusers' detection would call SD 1.x (its fallback)."""
    lora = "; apply a LoRA with load_pipeline(model, loras={path: weight})"
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lycoris_")) for k in keys):
        return _refuse(path, "a LoRA (kohya keys: lora_unet_..., lora_te_...)", lora)
    if any(p in k for k in keys for p in (".lora_A.", ".lora_B.", ".lora_down.", ".lora_up.")):
        return _refuse(path, "a LoRA (PEFT keys: ...lora_A... / ...lora_B...)", lora)
    if keys and all(k in ("emb_params", "clip_l", "clip_g") or k.startswith(("string_to_param.", "string_to_token."))
                    for k in keys):
        return _refuse(path, f"a textual-inversion embedding (keys {sorted(keys)[:3]})",
                       "; load an embedding onto a pipeline with diffusers' pipe.load_textual_inversion(...)")
    return None


# diffusers' kinds sdkit does not run, by prefix, in words (the rest are named as diffusers names them).
OTHERS = {"sd3": "Stable Diffusion 3", "sd35": "Stable Diffusion 3.5", "flux": "Flux", "chroma": "Flux (Chroma)",
          "controlnet": "ControlNet", "animatediff": "AnimateDiff (video)", "ltx": "LTX (video)",
          "mochi": "Mochi (video)", "hunyuan-video": "HunyuanVideo", "wan": "Wan (video)", "cosmos": "Cosmos (video)",
          "stable_cascade": "Stable Cascade", "playground": "Playground v2.5", "upscale": "SD x4 upscaler"}


def _structure(keys, in_channels: int) -> str | None:
    """The kind from the text encoders the file holds and its UNet's input channels. Size-independent, unlike
    diffusers' detection, which looks at layers only the full-size models have (`resblocks.9`, 1024-wide
    attention) and calls anything else SD 1.x."""
    if any(k.startswith("conditioner.embedders.1.model.") for k in keys):
        return "xl_inpaint" if in_channels == 9 else "xl_base"
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        return "xl_refiner"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "inpainting_v2" if in_channels == 9 else "v2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "inpainting" if in_channels == 9 else "v1"
    return None


def detect(path: Path) -> SingleFile:
    """What the file at `path` is (its configs not yet found), or a refusal naming what it is."""
    import torch
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    shapes = shapes_of(path)
    keys = list(shapes)
    refusal = _not_a_model(path, keys)
    if refusal is not None:
        raise refusal
    # diffusers' detection reads shapes only: give it tensors on the meta device (no memory, no weights).
    try:
        named = infer_diffusers_model_type({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    except Exception as e:  # a branch that reads values (a ControlNet's) cannot on meta tensors
        named = f"unknown ({type(e).__name__})"
    if named not in KINDS:
        what = next((w for p, w in OTHERS.items() if named.startswith(p)), named)
        raise _refuse(path, f"a {what} checkpoint (diffusers' detection: {named!r})")
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None:
        raise _refuse(path, f"a file without a Stable Diffusion UNet in the original layout (no {UNET}... keys; "
                            f"keys like {sorted(keys)[:3]})")
    kind = _structure(keys, conv_in[1])
    if kind is None:
        raise _refuse(path, "a UNet without its text encoder (no cond_stage_model. or conditioner. keys)")
    context = next((s[-1] for k, s in shapes.items() if k.startswith(UNET) and k.endswith("attn2.to_k.weight")), None)
    return SingleFile(Path(path), kind, KINDS[kind][0], conv_in[1], context,
                      sum(math.prod(s) for k, s in shapes.items() if k.startswith(UNET)))


def find_config(config: str | None, model_type: str, path: Path) -> Path:
    """The local diffusers folder with the configs for the file: `config` (folder or Hub id), else diffusers'
    default repo for the kind, from the Hugging Face cache or, online, downloaded (configs only)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if config is not None and (not isinstance(config, (str, os.PathLike)) or not str(config).strip()):
        raise ValueError(f"config={config!r}: give a diffusers folder or a Hub id like "
                         "'stable-diffusion-v1-5/stable-diffusion-v1-5'")
    repo = str(config) if config is not None else DIFFUSERS_DEFAULT_PIPELINE_PATHS[model_type]["pretrained_model_name_or_path"]
    how = (f"download its configs once, on a machine with network (a few kB): hf download {repo} --include "
           f"\"*.json\" \"*.txt\" \"*.model\", then copy the Hugging Face cache; or pass config= a diffusers "
           "folder or Hub id of the same kind")
    if config is not None and looks_like_path(repo):
        folder = Path(repo).expanduser()
        if not folder.is_dir():
            raise ModelNotAvailable(f"config={repo!r}: no such directory")
    else:
        with hub_errors(repo, f"config {repo!r}"):
            try:
                folder = Path(snapshot_download(repo, allow_patterns=CONFIG_FILES))
            except LocalEntryNotFoundError:
                raise ModelNotAvailable(
                    f"{str(path)!r} holds weights only; the configs that describe it ({repo}'s) are not in the "
                    f"local Hugging Face cache and the Hub cannot be reached (offline: HF_HUB_OFFLINE=1, or no "
                    f"network). To load it, {how}.") from None
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelNotAvailable(f"config {repo!r}: {folder} has no model_index.json; {how}")
    components = [k for k, v in json.loads(index.read_text()).items() if not k.startswith("_") and isinstance(v, list)
                  and v[0] is not None and k != "safety_checker"]  # diffusers never takes a checker from a file
    missing = [c for c in components if not (folder / c).is_dir()]
    if missing:
        raise ModelNotAvailable(f"config {repo!r}: {folder} lacks the configs of {missing}; {how}")
    return folder


def _check_config(sf: SingleFile, config: Path) -> None:
    """Refuse configs of another kind than the file, which would fail inside diffusers on a shape."""
    xl = "text_encoder_2" in json.loads((config / "model_index.json").read_text())
    unet = json.loads((config / "unet" / "config.json").read_text())
    width = unet.get("cross_attention_dim")
    width = width[0] if isinstance(width, (list, tuple)) else width
    words = KINDS[sf.model_type][1]
    if xl != sf.family.startswith("sdxl") or unet.get("in_channels") != sf.in_channels or (
            sf.context is not None and width != sf.context):
        raise ModelNotAvailable(
            f"{str(sf.path)!r} is {words} (UNet input channels: {sf.in_channels}, cross-attention width "
            f"{sf.context}), but the configs in {config} describe {'an SDXL' if xl else 'a Stable Diffusion 1.x/2.x'} "
            f"model with {unet.get('in_channels')} input channels and cross-attention width {width}: pass config= a "
            "diffusers folder or Hub id of the file's kind")


def resolve_single_file(model: str, config: str | None = None) -> SingleFile:
    """Check the file `model` names and find its configs; nothing is loaded but the file's header."""
    path = Path(model).expanduser()
    if not path.is_file():
        raise ModelNotAvailable(f"model={model!r}: no such file" + (
            " (a name ending in .safetensors or .ckpt is a file, never a Hub id)" if not path.exists() else
            " (a directory: a diffusers folder has no checkpoint suffix)"))
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelNotAvailable(
            f"model={model!r} is a pickle checkpoint ({path.suffix}): sdkit never loads pickles, because unpickling "
            f"can run arbitrary code. Convert it to safetensors once, if you trust its source: {CONVERT.format(path=path)} "
            f"(torch.load(weights_only=True), which refuses code objects), or get a .safetensors release")
    if path.suffix.lower() != ".safetensors":
        raise ModelNotAvailable(f"model={model!r}: a single-file checkpoint must be a .safetensors file")
    found = detect(path)
    folder = find_config(config, found.model_type, path)
    _check_config(found, folder)
    return dataclasses.replace(found, config=folder)


def load(cls, sf: SingleFile, *, safety_checker: bool, **kwargs):
    """`cls.from_single_file` on the checked file with its local configs; a Stable Diffusion 1.x/2.x checker
    comes from the config folder when it has safetensors weights (a single file never carries one)."""
    if cls.__name__.startswith("StableDiffusionXL") != sf.family.startswith("sdxl"):
        raise ModelNotAvailable(f"{str(sf.path)!r} is {KINDS[sf.model_type][1]}; {cls.__name__} cannot run it")
    checker = sf.config / "safety_checker"
    if safety_checker and sf.family == "sd" and any(checker.glob("*.safetensors")):
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

        kwargs["safety_checker"] = StableDiffusionSafetyChecker.from_pretrained(
            checker, use_safetensors=True, **{k: v for k, v in kwargs.items() if k in ("dtype", "torch_dtype")})
    elif sf.family == "sd":
        if safety_checker:
            log.warning("%s: no NSFW safety checker (a single file has none, nor has %s); images are not checked. "
                        "safety_checker=False says so and silences this.", sf.path, sf.config)
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if sf.family == "sdxl" and "text_encoder_2" not in kwargs:
        kwargs["text_encoder_2"] = _second_encoder_if_ambiguous(sf, kwargs.get("dtype", kwargs.get("torch_dtype")))
        if kwargs["text_encoder_2"] is None:
            del kwargs["text_encoder_2"]
    return cls.from_single_file(str(sf.path), config=str(sf.config), local_files_only=True, **kwargs)


def _second_encoder_if_ambiguous(sf: SingleFile, dtype):
    """SDXL's OpenCLIP encoder, built from its own keys, when diffusers would take the first one for it.

    diffusers tells SDXL's two encoders apart by width (768 vs 1280): for a file whose encoders share a width
    (sdkit:tiny-xl's), it loads the first encoder's weights into the second and leaves its projection empty.
    """
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from safetensors import safe_open
    from transformers import CLIPTextModelWithProjection

    shapes = shapes_of(sf.path)
    first = shapes.get("conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight")
    second = shapes.get("conditioner.embedders.1.model.positional_embedding")
    if first is None or second is None or first[-1] != second[-1]:
        return None
    with safe_open(str(sf.path), framework="pt") as f:
        own = {k: f.get_tensor(k) for k in f.keys() if k.startswith("conditioner.embedders.1.model.")}
    return create_diffusers_clip_model_from_ldm(CLIPTextModelWithProjection, own, subfolder="text_encoder_2",
                                                config=str(sf.config), torch_dtype=dtype, local_files_only=True)


def convert_to_safetensors(src, dst=None) -> Path:
    """Convert a pickle checkpoint (.ckpt/.pt/.pth/.bin) to `.safetensors` beside it (or at `dst`), once.

    `torch.load(weights_only=True)` unpickles tensors and plain containers only and refuses code objects; this is
    the one place sdkit unpickles, and only when called. Run it on files whose source you trust.
    """
    from safetensors.torch import save_file

    src = Path(src).expanduser()
    dst = Path(dst).expanduser() if dst is not None else src.with_suffix(".safetensors")
    save_file(read_pickle_state(src), str(dst))
    return dst


def read_pickle_state(src) -> dict:
    """The tensors of a pickle checkpoint, through `torch.load(weights_only=True)` (tensors and plain containers
    only; code objects refused), un-nested from `state_dict` and each a contiguous copy of its own."""
    import torch

    state = torch.load(Path(src).expanduser(), map_location="cpu", weights_only=True)
    while isinstance(state, dict) and "state_dict" in state:  # Lightning (and HPS v2) checkpoints nest the weights
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{src}: holds a {type(state).__name__}, not a state dict of tensors")
    # Shared storage (tied weights) cannot be saved as is: one copy each.
    return {k: v.detach().clone().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
