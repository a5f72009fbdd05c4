"""LoRAs on a pipeline: `.safetensors` files in diffusers/PEFT or kohya (A1111, ComfyUI) layout, applied through
diffusers' PEFT backend (`load_lora_weights`, which converts kohya keys itself), checked before any weights load,
and recorded with every image.

    pipe = load_pipeline("sdkit:tiny", loras={"~/loras/style.safetensors": 0.8})
    pipe = load_pipeline("sdkit:tiny", loras={"~/loras/style.safetensors": 0.4})  # same files: no reload

A LoRA changes the modules it is loaded into (PEFT layers in the UNet and text encoders), so the pipeline cache
keys a model's modules on its LoRA files (their sha256): a pipeline with LoRAs never shares modules with one
without, or with another set. The weights are each pipeline's own: `activate`, called by `generate` before it
denoises, sets them on the shared modules (diffusers' `set_adapters`), so pipelines with the same files and other
weights share one copy of the model and still each make their own images (not from two threads at once).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import warnings
from pathlib import Path

from sdkit.errors import ModelNotAvailable
from sdkit.load.hub import PICKLE_SUFFIXES
from sdkit.quiet import quiet_hf

# Cross-attention widths of the released models, to name what a LoRA was trained for.
CONTEXTS = {768: "SD 1.x", 1024: "SD 2.x", 1280: "the SDXL refiner", 2048: "SDXL"}
FAMILY_WORDS = {"sd": "an SD 1.x/2.x", "sdxl": "an SDXL", "sdxl-refiner": "an SDXL refiner"}
_ENCODERS = ("unet", "text_encoder", "text_encoder_2")  # where diffusers loads LoRA layers


@dataclasses.dataclass(frozen=True)
class Lora:
    """One LoRA file at one weight, as checked by `check_loras`."""

    path: str  # as the user gave it: what is recorded, and what `regenerate` opens again
    weight: float
    file: Path  # the file itself
    sha256: str  # of the whole file
    autov3: str  # A1111's and Civitai's LoRA hash ("AutoV3"): sha256 of the tensors after the header, 12 hex

    @property
    def name(self) -> str:
        """A1111's name for it (`<lora:name:weight>`, "Lora hashes"): the file name without its suffix."""
        return self.file.stem

    def record(self) -> dict:
        """What an image records: `file` is where it was (absolute), for a `regenerate` from another folder."""
        return {"path": self.path, "file": str(self.file.resolve()), "name": self.name, "weight": self.weight,
                "sha256": self.sha256, "autov3": self.autov3}


def adapter_name(i: int) -> str:
    """The PEFT adapter name of a pipeline's i-th LoRA (file names may hold dots, which PEFT's names cannot)."""
    return f"sdkit_{i}"


def file_hashes(path: Path) -> tuple[str, str]:
    """(sha256 of the file, AutoV3), in one read. Not cached: a file rewritten within the file system's timestamp
    granularity would keep its size and mtime."""
    whole, tensors = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(8)
        header = f.read(int.from_bytes(head, "little"))
        whole.update(head + header)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            whole.update(chunk)
            tensors.update(chunk)
    return whole.hexdigest(), tensors.hexdigest()[:12]


def _lora_file(path: str) -> Path:
    """The `.safetensors` file `path` names (a folder: the one it holds), or an error naming it."""
    where = Path(path).expanduser()
    if where.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"LoRA {path!r} is a pickle ({where.suffix}); sdkit loads LoRAs from .safetensors only, "
                         "because unpickling can run arbitrary code. Convert it once with safetensors' save_file")
    if where.is_dir():
        found = sorted(where.glob("*.safetensors"))
        if len(found) != 1:
            raise ValueError(f"LoRA {path!r} is a folder with {len(found)} .safetensors files; name the file")
        where = found[0]
    if not where.is_file():
        raise FileNotFoundError(f"LoRA {path!r}: no such file")
    if where.suffix.lower() != ".safetensors":
        raise ValueError(f"LoRA {path!r}: not a .safetensors file (sdkit loads LoRAs in safetensors only)")
    return where


def check_loras(loras) -> tuple[Lora, ...]:
    """`loras` ({path: weight}) checked and hashed, in the order given; a ValueError naming the bad entry."""
    if loras is None or loras == {}:
        return ()
    if not isinstance(loras, dict):
        raise TypeError(f"loras={loras!r}: give a dict {{path: weight}}, e.g. {{'style.safetensors': 0.8}}")
    checked, seen = [], {}
    for path, weight in loras.items():
        path = os.fspath(path)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"LoRA {path!r}: weight {weight!r} must be a finite number (0 turns it off, 1 is its "
                             "full strength, a negative one reverses it)")
        file = _lora_file(path)
        sha256, autov3 = file_hashes(file)
        if sha256 in seen:
            raise ValueError(f"LoRA {path!r} is the same file as {seen[sha256]!r}; give it once, with one weight")
        seen[sha256] = path
        checked.append(Lora(path, float(weight), file, sha256, autov3))
    require_peft()
    return tuple(checked)


def check_family(loras: tuple[Lora, ...], family: str, context: int | None) -> None:
    """Refuse a LoRA made for another kind of model, from its keys and shapes (no weights read): one with SDXL's
    second text encoder on an SD 1.x/2.x pipeline, or cross-attention layers of another width than the UNet's
    (`context`: 768 SD 1.x, 1024 SD 2.x, 2048 SDXL)."""
    from sdkit.load.single_file import shapes_of

    for lora in loras:
        shapes = shapes_of(lora.file)
        second = next((k for k in shapes if k.startswith(("text_encoder_2.", "lora_te2_"))), None)
        if second is not None and family == "sd":
            raise ValueError(f"LoRA {lora.path!r} is an SDXL LoRA (it has weights for SDXL's second text encoder: "
                             f"{second}); this pipeline is {FAMILY_WORDS[family]} model. Use a LoRA trained for it")
        widths = {s[1] for k, s in shapes.items() if "attn2" in k and ("to_k" in k or "to.k" in k) and len(s) == 2
                  and k.endswith(("lora_down.weight", "lora_A.weight", "down.weight"))}
        if context is not None and widths and widths != {context}:
            (width, *_) = sorted(widths)
            raise ValueError(
                f"LoRA {lora.path!r} was made for {CONTEXTS.get(width, f'a UNet with {width}-wide cross-attention')} "
                f"(its cross-attention layers take {width}-wide text embeddings); this pipeline is "
                f"{FAMILY_WORDS.get(family, family)} model whose UNet takes {context}. Use a LoRA trained for it")


def apply_loras(pipe, loras: tuple[Lora, ...]) -> None:
    """Load each LoRA into `pipe`'s modules as adapter `adapter_name(i)`; a LoRA none of whose layers exist in
    this model (or only some of them) is refused by name."""
    for i, lora in enumerate(loras):
        unexpected, failed = _Unexpected(), None
        logger = logging.getLogger("diffusers")
        logger.addHandler(unexpected)
        try:
            # quiet_hf: no per-load bars (a notebook stores them); its warnings still reach `unexpected`.
            with warnings.catch_warnings(), quiet_hf():  # a second adapter is what we ask for
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                pipe.load_lora_weights(str(lora.file), adapter_name=adapter_name(i))
        except (ValueError, RuntimeError, KeyError, IndexError) as e:  # diffusers' and PEFT's, on keys and shapes
            failed = f"{type(e).__name__}: {str(e).strip()}"
        finally:
            logger.removeHandler(unexpected)
        why = unexpected.messages[:1] or ([failed] if failed else [])  # the layers it names, when it names them
        if why:
            raise ValueError(f"LoRA {lora.path!r} does not fit this model (is it for another kind of model?): "
                             f"{why[0][:300]}")
        if adapter_name(i) not in adapters(pipe):
            raise ValueError(f"LoRA {lora.path!r}: none of its layers are in this model (is it for another kind "
                             "of model?)")


def require_peft() -> None:
    """diffusers loads LoRAs through `peft`: say so before any weights load, rather than diffusers after."""
    from importlib.metadata import PackageNotFoundError, version

    from diffusers.utils import constants

    if not constants.USE_PEFT_BACKEND:
        try:
            installed = version("peft")
        except PackageNotFoundError:
            installed = "none"
        raise ModelNotAvailable(f"LoRAs need the `peft` package, {constants.MIN_PEFT_VERSION} or newer (installed: "
                                f"{installed}): `pip install -U peft`")


class _Unexpected(logging.Handler):
    """diffusers' and PEFT's "unexpected keys" warning: some of the LoRA's layers are not in the model."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        message = record.getMessage()
        if "unexpected keys" in message:
            self.messages.append(message)


def adapters(pipe) -> set[str]:
    """The PEFT adapters loaded into `pipe`'s UNet and text encoders, whoever loaded them."""
    names = set()
    for component in _ENCODERS:
        names.update(getattr(getattr(pipe, component, None), "peft_config", None) or {})
    return names


def activate(pipe) -> None:
    """Before a pipeline call: `pipe`'s own LoRA weights onto its modules (shared with other pipelines of the same
    files). A LoRA loaded by hand (`pipe.load_lora_weights`) is refused: no file is known to record for it."""
    from sdkit.load.state import pipeline_info

    inner = getattr(pipe, "pipeline", pipe)  # an edit's wrapper: its pipeline
    loras = pipeline_info(inner).loras
    ours = [adapter_name(i) for i in range(len(loras))]
    unknown = sorted(adapters(inner) - set(ours))
    if unknown:
        raise ValueError(f"this pipeline carries LoRA adapters sdkit did not apply ({', '.join(unknown)}), which "
                         "its images could not record nor `regenerate` reapply: load them with "
                         "load_pipeline(..., loras={path: weight})")
    if loras:
        inner.set_adapters(ours, [lora.weight for lora in loras])


def from_records(records) -> dict | None:
    """The `loras=` that applies an image's recorded LoRAs again: each file at its recorded path (else where it was
    then), unchanged; an error naming a file that is gone or changed."""
    if not records:
        return None
    return {recorded_file(r, f"LoRA {r['path']!r} (weight {r['weight']:g}, sha256 {r['sha256'][:12]}...)",
                          lambda p: file_hashes(_lora_file(p))[0]): r["weight"] for r in records}


def recorded_file(record: dict, what: str, sha256_of) -> str:
    """The file an add-on's record names (its path as given, else the absolute file it was then), checked against
    the recorded sha256 (`sha256_of(path)`); an error naming `what` when it is gone or changed. LoRAs and
    embeddings share it."""
    found = [p for p in dict.fromkeys((record["path"], record.get("file") or record["path"]))
             if Path(p).expanduser().exists()]
    if not found:
        raise FileNotFoundError(f"this image was made with {what}, which is not there (nor at {record.get('file')!r}); "
                                "put the file back, or pass pipe= a pipeline that has it")
    sha256 = sha256_of(found[0])
    if sha256 != record["sha256"]:
        raise ValueError(f"this image was made with {what}; the file there now has sha256 {sha256[:12]}...: "
                         "another file, or changed since")
    return found[0]


def check_same(records, pipe) -> None:
    """Refuse to remake an image on a pipeline whose LoRAs (files or weights) are not the ones it records."""
    from sdkit.load.state import pipeline_info

    want = [(r["sha256"], float(r["weight"])) for r in records or ()]
    have = [(lora.sha256, lora.weight) for lora in pipeline_info(pipe).loras]
    if want != have:
        def say(loras):
            return ", ".join(f"{Path(p).name}:{w:g}" for p, w in loras) or "none"

        raise ValueError(f"this image was made with LoRAs {say((r['path'], r['weight']) for r in records or ())}; the "
                         f"pipeline given has {say((lora.path, lora.weight) for lora in pipeline_info(pipe).loras)}. "
                         "Leave pipe= out to load the recorded ones, or load_pipeline(..., loras=...) with them")
