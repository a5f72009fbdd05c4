"""What sdkit remembers about a pipeline and its modules: the one place, instead of attributes on diffusers'
objects.

    info = pipeline_info(pipe)      # model, revision, task, device, dtype as recorded in every result
    module_state(pipe.unet).batch_invariant

Entries are weak (a pipeline or module that is garbage-collected leaves nothing behind). A pipeline sdkit did
not load (built by hand, `from_single_file`) has no entry: `pipeline_info` then describes it from the object
itself (the path or id diffusers loaded it from, its own dtype, device and family), so its results still record
what `regenerate(png, pipe=...)` needs.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from typing import Any


@dataclasses.dataclass
class PipelineInfo:
    """A pipeline as `load_pipeline` made it; what each of its results records."""

    model_id: str = ""  # as the user named it (Hub id, folder, "sdkit:tiny"); "" for a pipeline sdkit did not load
    revision: str | None = None
    task: str = "text-to-image"
    device: str = ""
    dtype: str = ""  # sdkit's name: "float32", "float16", "bfloat16"
    # The model's own scheduler (class, config): a pipeline made from a cached one gets a fresh scheduler of it.
    own_scheduler: tuple[type, Any] | None = None
    family: str = "sd"  # `sdkit.load.kinds.FAMILIES`: "sd", "sdxl", "sdxl-refiner"
    vae: str | None = None  # another VAE the user named (`load_pipeline(vae=...)`); None: the model's own
    config: str | None = None  # a single file's config folder as the user named it (`load_pipeline(config=...)`)
    model_hash: str | None = None  # a single file's AutoV2 (sha256, 10 hex), A1111's "Model hash"; None: a folder
    loras: tuple = ()  # `sdkit.load.loras.Lora`s at this pipeline's weights (`load_pipeline(loras=...)`)
    embeddings: tuple = ()  # `sdkit.load.embeddings.Embedding`s loaded (`load_pipeline(embeddings=...)`)
    lora_dir: str | None = None  # where a prompt's `<lora:name:weight>` tags are looked up (`load_pipeline(lora_dir=...)`)
    load_args: dict | None = None  # the `load_pipeline` arguments that made it: the same model with more LoRAs


@dataclasses.dataclass
class ModuleState:
    """What sdkit changed on one module (a UNet, a text encoder), shared by every pipeline made from it."""

    installed: bool = False  # sdkit's wrapper is on the module (`invariance.install`)
    batch_invariant: bool = False  # one candidate at a time (the UNet, the VAE decode); else the live ones together
    compiled: bool = False  # forward replaced by a torch.compile'd one
    skip: set[int] | None = None  # inside `invariance.skipping`: candidates whose UNet evaluations are skipped
    rows: Any = None  # inside one pipeline call: its `sdkit.load.rows.Rows` (what ran where, and any replay)
    max_rows: int | None = None  # candidates per UNet call at most, when they run together (a GPU's batch size)
    replay: Any = None  # inside `rows.replaying`: {row of the next call: the Arithmetic to replay}
    # inside `rows.text_lengths`: {row of the call: its prompt's length in tokens}, where rows differ (long prompts)
    text_lengths: dict[int, int] | None = None


_pipelines: "weakref.WeakKeyDictionary[Any, PipelineInfo]" = weakref.WeakKeyDictionary()
_modules: "weakref.WeakKeyDictionary[Any, ModuleState]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def remember(pipe, **fields) -> PipelineInfo:
    """Record (or update) what sdkit knows of `pipe`; returns its entry."""
    with _lock:
        info = _pipelines.get(pipe)
        info = dataclasses.replace(info, **fields) if info is not None else PipelineInfo(**fields)
        _pipelines[pipe] = info
        return info


def pipeline_info(pipe) -> PipelineInfo:
    """What sdkit recorded for `pipe`, or what the object itself says for a pipeline sdkit did not load."""
    info = _pipelines.get(pipe)
    if info is not None:
        return info
    inner = getattr(pipe, "pipeline", None)  # a wrapper around a pipeline (an edit's): its pipeline's entry
    if inner is not None and inner is not pipe:
        return pipeline_info(inner)
    from sdkit.load.kinds import family_of_pipeline

    dtype = str(getattr(pipe, "dtype", "")).replace("torch.", "")
    # The model as the user gave it to diffusers (`from_pretrained`/`from_single_file` record it), so that a
    # PNG names what `regenerate` should load; "" for a pipeline built from modules.
    config = getattr(pipe, "config", None)
    model_id = str(getattr(config, "_name_or_path", "") or "") if config is not None else ""
    family = family_of_pipeline(pipe) if getattr(pipe, "unet", None) is not None else "sd"
    return PipelineInfo(model_id=model_id, device=str(getattr(pipe, "device", "")), dtype=dtype, family=family)


def module_state(module) -> ModuleState:
    """The state sdkit keeps for `module` (created empty on first use)."""
    with _lock:
        state = _modules.get(module)
        if state is None:
            state = _modules[module] = ModuleState()
        return state
