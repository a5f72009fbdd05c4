"""The toy world: shipped ready to use, or trained once and cached. A Stable Diffusion pipeline and a CLIP, in Hub layout.

    sdkit/toy/fixture/           the CI-sized world, trained by `make toy` on one machine and shipped
        pipeline/ clip/          (fp16 safetensors, a few MB: the one set of weights in the repository),
        world.json SHIPPED.json  so `sdkit:toy` and `make demo` show real pictures with no training
    <cache>/toy/<size>-<key>/    a world trained here (`toy_world_path(train=True)`, `--size full`)
        pipeline/   model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/ (DDIM)
        clip/       a full CLIPModel checkpoint + tokenizer + preprocessor_config.json
        world.json  settings, timings and held-out accuracies of this build

`<key>` hashes the training code, the settings and the library versions, so changing any of
them trains a new world. SHIPPED.json holds the shipped world's training settings, the key,
the machine it was trained on and a content hash of its tensors, which `make toy` compares a
fresh training against (bit-identical on the same CPU and thread count; training uses bf16
autocast, so another CPU's kernels give other weights and only the figures compare).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from sdkit.models.cache import build_atomically, build_key, cache_root
from sdkit.models.tokenizer import save_clip_tokenizer
from sdkit.quiet import quiet_hf
from sdkit.toy import shapes, train
from sdkit.toy.junk import junk
from sdkit.toy.settings import ClipSettings, UnetSettings, VaeSettings, WorldSettings

SIZES = {
    # CI: a few minutes on 2 cores, and reranking must clearly help (tests/test_toy.py). SD 1.x's
    # epsilon objective: its mistakes at this budget are wrong colours, which CLIP sees. (With
    # v-prediction the early mistakes are lumpy shapes, which this tiny CLIP cannot rank: measured
    # top-1 = mean at 800 steps.)
    "ci": WorldSettings(
        clip=ClipSettings(steps=400),
        vae=VaeSettings(steps=400),
        unet=UnetSettings(steps=1000, prediction_type="epsilon"),
    ),
    # The README's pictures: v-prediction, clean shapes in the right colours (~4-6 min).
    "full": WorldSettings(),
}


# Longest first: BPE applies merges by rank, and a short word's merges ranked early (the "r e"
# of "red") can break a later word's chain ("g r e e n"); in this order every word is one token.
TOY_WORDS = tuple(sorted(["a", *shapes.COLORS, *shapes.SHAPES], key=len, reverse=True))


def check_tokenizer(tokenizer) -> None:
    """Every toy prompt must be <bos> a colour shape <eos>: 5 tokens, inside `model_max_length`."""
    for p in shapes.PROMPTS:
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(p).input_ids)
        if len(tokens) != 5 or len(tokens) > tokenizer.model_max_length:
            raise ValueError(f"toy tokenizer splits {p!r} into {tokens}; expected one token per word "
                             f"within model_max_length={tokenizer.model_max_length}")


def settings_for(size: str | WorldSettings) -> WorldSettings:
    if isinstance(size, WorldSettings):
        return size
    if size not in SIZES:
        raise ValueError(f"size={size!r}: choose one of {list(SIZES)} or pass a WorldSettings")
    return SIZES[size]


def world_key(settings: WorldSettings) -> str:
    """Hash of everything that determines the weights: code, settings, library versions."""
    modules = [shapes, train, sys.modules[__name__]]
    modules += [sys.modules[f.__module__] for f in (junk, WorldSettings, save_clip_tokenizer)]
    return build_key(modules, settings)


FIXTURE = Path(__file__).parent / "fixture"


def shipped_world_path() -> Path | None:
    """The shipped CI-sized world, if this copy of sdkit has it."""
    return FIXTURE if (FIXTURE / "SHIPPED.json").is_file() and (FIXTURE / "pipeline").is_dir() else None


def content_hash(world: str | os.PathLike) -> str:
    """sha256 over every tensor of a world's safetensors (file, name, dtype, shape, bytes), in path order.

    Tensors only: configs carry library versions, which do not change a picture. A world's reward/ (the toy
    reward model shipped beside it, `sdkit.toy.reward`) is not part of the world and has its own hash."""
    from safetensors import safe_open

    world = Path(world)
    h = hashlib.sha256()
    for f in sorted(world.rglob("*.safetensors")):
        if f.relative_to(world).parts[0] == "reward":
            continue
        with safe_open(f, "np") as st:
            for k in sorted(st.keys()):
                a = st.get_tensor(k)
                h.update(f"{f.relative_to(world).as_posix()}:{k}:{a.dtype}:{a.shape}".encode())
                h.update(a.tobytes())
    return h.hexdigest()


def ship_world(src: str | os.PathLike, dest: str | os.PathLike = FIXTURE, figures: dict | None = None) -> dict:
    """Copy a trained world to `dest` with fp32 weights stored as fp16 (halves the size; CLIP's
    `logit_scale` stays fp32, whose exp must be 100 exactly), and write SHIPPED.json beside it."""
    import platform

    from safetensors.numpy import load_file, save_file

    src, dest = Path(src), Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.lock"))
    for f in sorted(src.rglob("*.safetensors")):
        tensors = {k: (v.astype("float16") if v.dtype == "float32" and k != "logit_scale" else v)
                   for k, v in load_file(f).items()}
        save_file(tensors, tmp / f.relative_to(src), metadata={"format": "pt"})
    info = load_world_info(src)
    shipped = {
        "what": "the CI-sized toy world (sdkit.toy.world.SIZES['ci']), weights in fp16",
        "content_sha256": content_hash(tmp),
        "world_key": src.name.rsplit("-", 1)[-1],
        "settings": info["settings"],
        "trained_on": {"cpu": _cpu_name(), "machine": platform.machine(), "threads": info["settings"]["threads"],
                       "torch": info.get("torch")},
        "times": info["times"],
        "figures": figures or {},
    }
    (tmp / "SHIPPED.json").write_text(json.dumps(shipped, indent=2) + "\n")
    if (dest / "reward").is_dir():  # the reward model shipped beside it (its reward.json names the world it fits)
        shutil.copytree(dest / "reward", tmp / "reward")
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)
    return shipped


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def toy_world_path(size: str | WorldSettings = "ci", *, train: bool = False, log=print) -> Path:
    """The toy world's directory: the shipped CI world, or (`train=True`, other sizes) trained on first use
    (minutes) and cached.

    Concurrent callers wait for one build (a file lock) instead of training twice.
    """
    if size == "ci" and not train and shipped_world_path() is not None:
        return shipped_world_path()
    settings = settings_for(size)
    name = size if isinstance(size, str) else "custom"
    final = cache_root() / "toy" / f"{name}-{world_key(settings)}"

    def build(tmp: Path) -> None:
        if log:
            log(f"sdkit.toy: training the {name!r} toy world into {final} (once per machine)")
        build_world(tmp, settings, log=log)

    return build_atomically(final, build)


def build_world(out_dir: str | os.PathLike, settings: WorldSettings = WorldSettings(), log=print) -> dict:
    """Train VAE, CLIP and UNet from `settings.seed` and save pipeline/ and clip/ under `out_dir`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)  # restored below: the caller's setting is the caller's
    try:
        with quiet_hf(messages=True):  # our own progress lines, not "Writing model shards" bars
            return _build(Path(out_dir), settings, log)
    finally:
        torch.set_num_threads(threads)


def _build(out: Path, s: WorldSettings, log) -> dict:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessor, CLIPTextModel

    times = {}
    t0 = time.perf_counter()

    tokenizer = save_clip_tokenizer(out / "pipeline" / "tokenizer", words=TOY_WORDS, model_max_length=s.max_length)
    check_tokenizer(tokenizer)

    images, labels, _ = shapes.sample(s.pool_size, seed=s.seed)
    pool, labels = train.to_tensor(images), torch.from_numpy(labels)
    junk_pool = train.to_tensor(junk(s.pool_size // 4, seed=s.seed + 1)[0])

    t = time.perf_counter()
    vae = train.train_vae(s.vae, pool, seed=s.seed, log=log)
    times["vae_s"] = time.perf_counter() - t

    t = time.perf_counter()
    recon = None
    if s.clip.recon_fraction > 0:
        k = s.clip.recon_pool
        recon = (train.reconstruct(vae, pool[:k], seed=s.seed, bf16=s.vae.bf16), labels[:k])
        junk_pool = torch.cat([junk_pool, train.reconstruct(vae, junk_pool[:k // 4], seed=s.seed + 1, bf16=s.vae.bf16)])
    clip = train.train_clip(s.clip, tokenizer, pool, labels, junk_pool, seed=s.seed, recon=recon, log=log)
    times["clip_s"] = time.perf_counter() - t
    held_images, held_labels, _ = shapes.sample(2000, seed=s.seed + 10_000)
    zero_shot = train.zero_shot_accuracy(clip, tokenizer, held_images, held_labels)
    if log:
        log(f"  clip zero-shot accuracy on 2000 held-out images: {zero_shot:.3f}")

    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    text_encoder.eval()
    embeds = train.prompt_embeds(text_encoder, tokenizer, shapes.PROMPTS + ("",))

    t = time.perf_counter()
    latents = train.encode(vae, pool)
    unet = train.train_unet(s.unet, latents, labels, embeds, vae.config.scaling_factor, seed=s.seed, log=log)
    times["unet_s"] = time.perf_counter() - t

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=train.make_scheduler(s.unet.prediction_type),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False, image_encoder=None,
    )
    pipe.save_pretrained(out / "pipeline", safe_serialization=True)

    clip_dir = out / "clip"
    clip.save_pretrained(clip_dir, safe_serialization=True)
    save_clip_tokenizer(clip_dir, words=TOY_WORDS, model_max_length=s.max_length)
    size = shapes.IMAGE_SIZE
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=list(train.CLIP_MEAN), image_std=list(train.CLIP_STD)).save_pretrained(clip_dir)

    times["total_s"] = time.perf_counter() - t0
    info = {
        "settings": dataclasses.asdict(s),
        "times": {k: round(v, 1) for k, v in times.items()},
        "clip_zero_shot": zero_shot,
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "vae_parameters": sum(p.numel() for p in vae.parameters()),
        "clip_parameters": sum(p.numel() for p in clip.parameters()),
        "torch": torch.__version__,
    }
    (out / "world.json").write_text(json.dumps(info, indent=2))
    if log:
        log(f"  trained in {times['total_s']:.0f}s (vae {times['vae_s']:.0f}s, clip {times['clip_s']:.0f}s, "
            f"unet {times['unet_s']:.0f}s)")
    return info


def load_world_info(path: str | os.PathLike) -> dict:
    return json.loads((Path(path) / "world.json").read_text())
