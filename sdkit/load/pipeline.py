"""Get a pipeline for a model id or path and a task: resolve, check, load once, reuse.

The same code path serves a Hub id on a user's GPU and sdkit's tiny models here:
a Hub id is resolved to a local snapshot (`sdkit.load.hub`: huggingface_hub, which honours
`HF_HUB_OFFLINE` and the cache), the device and dtype are picked (`sdkit.load.devices`), then
the snapshot is loaded with diffusers' `from_pretrained`, safetensors only, and cached.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from sdkit.errors import ModelNotAvailable
from sdkit.load.devices import auto_dtype, max_rows, resolve_device, resolve_dtype, unet_parameters
from sdkit.load.hub import MIRRORS, local_dir, local_files, looks_like_path, no_safetensors, pickles, repo_files, snapshot
from sdkit.load.invariance import install
from sdkit.load.kinds import TASKS, check_task, family_of, pipeline_class, unet_setting
from sdkit.load.embeddings import apply_embeddings, check_embeddings
from sdkit.load.loras import apply_loras, check_family, check_loras, file_hashes
from sdkit.load import single_file
from sdkit.load.schedulers import check_scheduler, make_scheduler
from sdkit.load.state import module_state, pipeline_info, remember
from sdkit.models.builtin import BUILTIN, builtin_pipeline_path
from sdkit.quiet import quiet_hf

log = logging.getLogger(__name__)

WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2", "safety_checker")
_ALLOW = ["*.json", "*.txt", "*.model"]  # configs, tokenizer files


@dataclass(frozen=True)
class Resolved:
    model_id: str  # what the user asked for, after mirror renames
    path: Path  # local snapshot directory (for a single file: the folder of its configs)
    revision: str | None
    variant: str | None
    single_file: single_file.SingleFile | None = None  # a single-file checkpoint (`sdkit.load.single_file`)

    @property
    def weights_key(self):
        """What the pipeline cache keys the weights on: a folder's path, or a file's path, size and mtime."""
        return self.single_file.key if self.single_file else str(self.path)


def _check_weights(root: Path, files: list[str], model: str) -> None:
    """Refuse repos whose weights are pickle only: unpickling runs arbitrary code."""
    index = json.loads((root / "model_index.json").read_text()) if (root / "model_index.json").exists() else {}
    for comp in WEIGHTED:
        if comp not in index or index[comp] in (None, [None, None]):
            continue
        comp_files = [f for f in files if f.startswith(comp + "/")]
        if not any(f.endswith(".safetensors") for f in comp_files) and pickles(comp_files):
            raise no_safetensors(f"model {model!r}", f"{comp}/", comp_files)


def _pick_variant(files: list[str], dtype, variant) -> str | None:
    if variant != "auto":
        return variant
    if dtype != torch.float16:
        return None
    weights = [f for f in files if f.endswith(".safetensors")]
    comps = {f.split("/")[0] for f in weights if "/" in f}
    has = {f.split("/")[0] for f in weights if f.endswith(".fp16.safetensors")}
    return "fp16" if comps and comps <= has else None


def resolve_vae(vae: str) -> Path:
    """A VAE's local folder (config.json and safetensors weights), from a Hub id or a path."""
    label = f"VAE {vae!r}"
    if not isinstance(vae, str) or not vae.strip():
        raise ValueError(f"vae={vae!r}: give a Hub id such as 'madebyollin/sdxl-vae-fp16-fix' or a folder")
    path = local_dir(vae, label) if looks_like_path(vae) else snapshot(
        vae, label, allow_patterns=["config.json", "diffusion_pytorch_model*.safetensors"])
    if not (path / "config.json").exists():
        raise ModelNotAvailable(f"vae={vae!r}: {path} has no config.json; is it a diffusers AutoencoderKL folder?")
    files = local_files(path)
    if not any(f.endswith(".safetensors") for f in files):
        raise no_safetensors(label, "the folder", files)
    return path


def resolve(model: str, *, revision: str | None = None, dtype=torch.float32, variant="auto",
            config: str | None = None) -> Resolved:
    """Turn a Hub id, a local path or a built-in name into a local directory, downloading safetensors only."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model={model!r}: give a Hub id like 'stable-diffusion-v1-5/stable-diffusion-v1-5', a local path, or one of {list(BUILTIN)}")
    # Single-file checkpoints: their own module; the rest of loading is shared.
    if not model.startswith("sdkit:") and single_file.is_single_file(model):
        if revision is not None:
            raise ValueError(f"revision={revision!r}: a single file has no revisions (model={model!r})")
        found = single_file.resolve_single_file(model, config)
        return Resolved(model, found.config, None, None, found)
    if config is not None:
        raise ValueError(f"config={config!r} is for single-file checkpoints; model={model!r} is not a file")
    if model in MIRRORS:
        log.info(f"{model} was deleted from the Hub; using its mirror {MIRRORS[model]}")
        model = MIRRORS[model]
    label = f"model {model!r}"
    if model.startswith("sdkit:"):
        path = builtin_pipeline_path(model)
    elif looks_like_path(model):
        path = local_dir(model, label)
        if not (path / "model_index.json").exists():
            raise ModelNotAvailable(f"model={model!r}: {path} has no model_index.json; is it a diffusers pipeline folder?")
    else:
        # Configs first: small, and they tell us the variant and whether weights are safe.
        hint = "; or try sdkit's built-in 'sdkit:tiny' model"
        configs = snapshot(model, label, allow_patterns=_ALLOW, revision=revision, hint=hint)
        files = repo_files(model, configs, label, revision)
        _check_weights(configs, files, model)
        chosen = _pick_variant(files, dtype, variant)
        weights = [f"*.{chosen}.safetensors"] if chosen else ["*.safetensors"]
        path = snapshot(model, label, allow_patterns=_ALLOW + weights, revision=revision, hint=hint)
        return Resolved(model, path, revision, chosen)
    files = local_files(path)
    _check_weights(path, files, model)
    return Resolved(model, path, revision, _pick_variant(files, dtype, variant))


# diffusers 0.42 renamed `torch_dtype` to `dtype`.
_DTYPE_KW = "dtype" if tuple(int(x) for x in __import__("diffusers").__version__.split(".")[:2]) >= (0, 42) else "torch_dtype"

_cache: dict[tuple, object] = {}
_lock = threading.Lock()


def load_pipeline(
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
    task: str = "text-to-image",
    *,
    device="auto",
    dtype="auto",
    scheduler: str | None = None,
    safety_checker: bool = True,
    variant="auto",
    revision: str | None = None,
    low_memory: bool = False,
    batch_invariant: bool | str = "auto",
    compile: bool = False,
    vae: str | None = None,
    config: str | None = None,
    loras: dict | None = None,
    embeddings=None,
    lora_dir: str | None = None,
):
    """Load (or reuse) a diffusers pipeline for `model` and `task`.

    Args:
        model: Hub id, local diffusers folder, single-file .safetensors checkpoint (original/A1111 layout, see
            `config`), or a built-in (see `sdkit.models.builtin.BUILTIN`: "sdkit:tiny", "sdkit:tiny-xl", "sdkit:toy",
            ...). Stable Diffusion 1.x/2.x and SDXL (base, refiner, inpainting), recognised from
            `model_index.json` (a file: from its keys); other kinds are refused by name (`sdkit.load.kinds`).
            Deleted tutorial ids (runwayml/...) resolve to their mirrors.
        task: "text-to-image", "image-to-image" or "inpainting" (an SDXL refiner: the last two).
        device: "auto" (cuda > mps > cpu) or a torch device string.
        dtype: "auto" (fp16 on GPUs; on CPUs with native bf16, bf16 for UNets of 100M+ parameters, which
            it speeds up 1.7-1.9x, fp32 for smaller ones, which it slows; else fp32), "fp16", "bf16", "fp32" or a torch.dtype.
        scheduler: an sdkit scheduler name (see `sdkit.load.schedulers.SCHEDULERS`); None keeps the model's own.
        safety_checker: keep the model's NSFW checker (default). False removes it, explicitly.
        variant: "auto" uses the repo's fp16 weights when loading in fp16 and it has them; or a variant name / None.
        low_memory: for 4-8 GB GPUs: attention and VAE slicing, VAE tiling, and model CPU offload on CUDA.
        batch_invariant: run the UNet per candidate (its guidance pair in one call) and the VAE per image,
            so candidate k is bit-identical in any batch size. "auto" turns it on for the CPU, where it costs
            nothing next to one call per image (see `sdkit.load.invariance`). Off (a GPU's default), the live
            candidates run together and each image records its batch size and row in every call, which
            `regenerate`, resume and a search's survivors replay exactly (`sdkit.load.rows`).
        compile: `torch.compile` the UNet (inductor, weights frozen on CPU). The first call compiles for
            minutes; later calls run 8-15% faster on a bf16 CPU (bench/). Results differ from eager in the last bits.
        vae: another VAE (Hub id or folder of an `AutoencoderKL`), e.g. "madebyollin/sdxl-vae-fp16-fix": SDXL's
            own VAE overflows in fp16, so diffusers decodes with it in fp32 (its config's `force_upcast`); a
            VAE made fp16-safe decodes in fp16. Each image records which (`extra["sdxl"]["vae_decode"]`).
        config: for a single-file checkpoint, the diffusers folder or Hub id whose configs describe it; by default
            the repo diffusers pairs with the file's kind, from the local Hugging Face cache (`sdkit.load.single_file`).
        loras: {path: weight} of LoRA `.safetensors` files (diffusers/PEFT or kohya layout, e.g. from A1111, ComfyUI,
            Civitai), applied through diffusers' PEFT backend (needs `peft`). Each image records them (path, weight,
            sha256; A1111's "Lora hashes"). See `sdkit.load.loras`.
        embeddings: textual-inversion `.safetensors` files (A1111, diffusers or SDXL layout), a list of paths or
            {path: token}; a prompt uses one by its token (A1111's: the file name). Recorded like LoRAs (A1111's
            "TI hashes"). See `sdkit.load.embeddings`.
        lora_dir: the folder a prompt's `<lora:name:weight>` tags are looked up in (`name.safetensors`, also in
            subfolders); default the environment's `SDKIT_LORA_DIR`. See `sdkit.prompts`.

    A second call with the same model, device, dtype and LoRA files reuses the loaded weights,
    also for another task, scheduler or LoRA weights (diffusers' `from_pipe`). Tokens come from
    the standard Hugging Face login (`hf auth login`) or `HF_TOKEN`; sdkit never takes one.
    """
    import diffusers

    args = {k: v for k, v in locals().items() if k != "diffusers"}  # as given: `with_prompt_loras` loads it again
    check_scheduler(scheduler)
    if task not in TASKS:
        raise ValueError(f"task={task!r}: choose one of {list(TASKS)}")
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    res = resolve(model, revision=revision, dtype=torch_dtype, variant=variant, config=config)
    if dtype in (None, "auto"):  # now that the UNet's size is known
        torch_dtype = auto_dtype(device, res.single_file.unet_parameters if res.single_file else unet_parameters(res.path))
    family = family_of(res.path, res.model_id)  # refuses SD3, Flux, ... before any weights load
    check_task(task, res.path, res.model_id, family)
    vae_path = resolve_vae(vae) if vae is not None else None
    lora_set = check_loras(loras)
    embedding_set = check_embeddings(embeddings)
    if lora_set:
        check_family(lora_set, family, res.single_file.context if res.single_file else
                     unet_setting(res.path, "cross_attention_dim", res.model_id))
    if task == "inpainting" and unet_setting(res.path, "in_channels") == 4:
        log.warning("%s is not an inpainting checkpoint; inpainting with it blends latents outside the mask "
                    "(works, but a 9-channel inpainting model follows the mask better)", res.model_id)

    if batch_invariant == "auto":
        batch_invariant = device == "cpu"
    weights_key = (res.weights_key, res.variant, device, str(torch_dtype), bool(safety_checker), bool(low_memory),
                   bool(batch_invariant), bool(compile), str(vae_path), tuple(x.sha256 for x in lora_set),
                   tuple((x.sha256, x.token) for x in embedding_set))
    # The names as the user gave them too: each pipeline records them (a path and `sdkit:tiny` may be the same
    # weights; LoRAs as each image records them).
    key = weights_key + (task, scheduler, res.model_id, tuple((x.path, x.weight) for x in lora_set),
                         tuple(x.path for x in embedding_set), lora_dir)
    with _lock:
        if key in _cache:
            return _cache[key]
        cls = pipeline_class(family, task)
        base = next((p for k, p in _cache.items() if k[: len(weights_key)] == weights_key), None)
        if base is not None:
            # A scheduler holds per-run state (timesteps, step index), and the base may have another
            # one: each pipeline gets its own, made from the model's own scheduler config.
            own_cls, own_config = pipeline_info(base).own_scheduler
            with quiet_hf(messages=True):
                # dtype given: from_pipe otherwise casts the shared modules, the base's too, to fp32.
                pipe = cls.from_pipe(base, scheduler=own_cls.from_config(own_config), **{_DTYPE_KW: torch_dtype})
            own = pipeline_info(base).own_scheduler
            model_hash = pipeline_info(base).model_hash
        else:
            kwargs = {}
            if vae_path is not None:
                kwargs["vae"] = diffusers.AutoencoderKL.from_pretrained(vae_path, use_safetensors=True,
                                                                        **{_DTYPE_KW: torch_dtype})
            if not safety_checker and family == "sd" and not res.single_file:  # SDXL has no safety checker
                kwargs.update(safety_checker=None, requires_safety_checker=False)
            kwargs[_DTYPE_KW] = torch_dtype
            with quiet_hf():
                if res.single_file:
                    pipe = single_file.load(cls, res.single_file, safety_checker=safety_checker, **kwargs)
                else:
                    pipe = cls.from_pretrained(res.path, variant=res.variant, use_safetensors=True, **kwargs)
            if embedding_set:
                apply_embeddings(pipe, embedding_set)  # new token rows: in modules no one else holds
            if lora_set:
                apply_loras(pipe, lora_set)  # before compiling and sdkit's wrappers, into modules no one else holds
            _place(pipe, device, low_memory)
            if compile:
                _compile_unet(pipe.unet, device)
            install(pipe, batch_invariant=batch_invariant, max_rows=max_rows(device))
            own = (type(pipe.scheduler), pipe.scheduler.config)
            # A1111's "Model hash" (AutoV2) for a file (one read of it: ~1 s per GB); a folder has none A1111 knows.
            model_hash = file_hashes(res.single_file.path)[0][:10] if res.single_file else None
        pipe.set_progress_bar_config(disable=True)  # sdkit reports progress itself
        if scheduler is not None:
            pipe.scheduler = make_scheduler(scheduler, own[1])
        # What sdkit records in every result.
        remember(pipe, model_id=res.model_id, revision=res.revision, task=task, device=device,
                 dtype=str(torch_dtype).replace("torch.", ""), own_scheduler=own, family=family, vae=vae,
                 config=str(config) if config is not None else None, loras=lora_set, model_hash=model_hash,
                 embeddings=embedding_set, lora_dir=None if lora_dir is None else str(lora_dir), load_args=args)
        _cache[key] = pipe
        return pipe


def with_prompt_loras(pipe, prompts):
    """`pipe`, or the same model with the LoRAs its prompts' `<lora:name:weight>` tags name added (loaded through the
    cache: the same weights, no reload of the model). A tag names a LoRA the pipeline has (by file name), or a file
    `name.safetensors` in its `lora_dir` (or `SDKIT_LORA_DIR`); a missing one is an error naming it and the folder."""
    import os

    from sdkit.prompts import parse

    tags = {}
    for p in prompts:
        tags.update(parse(p).loras)
    if not tags:
        return pipe
    info = pipeline_info(pipe)
    have = {lora.name: lora for lora in info.loras}
    loras = {lora.path: lora.weight for lora in info.loras}
    folder = info.lora_dir or os.environ.get("SDKIT_LORA_DIR")
    for name, weight in tags.items():
        if name in have:
            loras[have[name].path] = weight
            continue
        if not folder:
            raise FileNotFoundError(f"<lora:{name}:{weight:g}> in the prompt: no LoRA folder is set to find "
                                    f"{name}.safetensors in; pass load_pipeline(..., lora_dir=...) or set SDKIT_LORA_DIR")
        root = Path(folder).expanduser()
        found = sorted(root.rglob(f"{name}.safetensors")) if root.is_dir() else []
        if not found:
            raise FileNotFoundError(f"<lora:{name}:{weight:g}> in the prompt: no {name}.safetensors in the LoRA "
                                    f"folder {str(root)!r}" + ("" if root.is_dir() else " (no such folder)"))
        loras[str(found[0])] = weight
    if loras == {lora.path: lora.weight for lora in info.loras}:
        return pipe
    if info.load_args is None:
        raise ValueError(f"the prompt's <lora:> tags ({', '.join(tags)}) need a pipeline from load_pipeline, which "
                         "sdkit can load again with them; this one was built elsewhere")
    return load_pipeline(**{**info.load_args, "task": info.task, "loras": loras})


def _place(pipe, device: str, low_memory: bool) -> None:
    if low_memory:
        pipe.enable_attention_slicing()
        pipe.vae.enable_slicing()
        pipe.vae.enable_tiling()
        if device.startswith("cuda"):
            pipe.enable_model_cpu_offload(device=device)  # moves modules to the GPU only while they run
            return
    pipe.to(device)
    if device == "cpu" and pipe.unet.dtype == torch.bfloat16:
        # oneDNN's bf16 convolutions run 5% faster on NHWC tensors (bench/: "channels_last").
        pipe.unet.to(memory_format=torch.channels_last)


def _compile_unet(unet, device: str) -> None:
    """Replace `unet.forward` with a compiled one (before the batch-invariance wrapper goes around it)."""
    import contextlib
    import functools
    import warnings

    import torch._inductor.config as inductor

    compiled = torch.compile(unet.forward)  # the bound forward: compiling the module would call the wrapper

    @functools.wraps(unet.forward)
    def forward(*args, **kwargs):
        # On CPU, weights as constants: oneDNN packs them once instead of every step (bench/: ~8-14%).
        frozen = inductor.patch(freezing=True) if device == "cpu" else contextlib.nullcontext()
        with frozen, warnings.catch_warnings():
            # Tracing diffusers' cached version checks warns once per check; harmless, and noise in a notebook.
            warnings.filterwarnings("ignore", message=r".*functools\.lru_cache.*")
            return compiled(*args, **kwargs)
    unet.forward = forward
    module_state(unet).compiled = True


def clear_cache() -> None:
    """Forget every loaded pipeline (frees their memory once nothing else holds them)."""
    with _lock:
        _cache.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
