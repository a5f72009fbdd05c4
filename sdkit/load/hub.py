"""Find a model's local folder from a Hub id or a path, for pipelines and CLIPs alike: safetensors only.

A Hub id goes through huggingface_hub's `snapshot_download` (so its cache, HF_HUB_OFFLINE and
HF_HUB_CACHE apply), asking only for configs, tokenizers and safetensors; pickle weights are never
downloaded nor loaded, because unpickling can run arbitrary code. Whatever cannot be had raises
`sdkit.errors.ModelNotAvailable` saying what to do. Pipelines: `sdkit.load.pipeline.resolve`; CLIPs: `resolve_clip`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from sdkit.errors import ModelNotAvailable

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")

# Hub repos the tutorials name that no longer exist, and their maintained mirrors.
MIRRORS = {
    "runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "runwayml/stable-diffusion-inpainting": "stable-diffusion-v1-5/stable-diffusion-inpainting",
}


def looks_like_path(s: str) -> bool:
    """A local path rather than a Hub id ('org/name')."""
    return s.startswith((".", "/", "~")) or os.sep in s.strip("/").replace("/", "", 1) or os.path.exists(s)


def local_dir(name: str, label: str) -> Path:
    """`name` as an existing directory; `label` names the model in the error ("model 'x'", "CLIP 'x'")."""
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ModelNotAvailable(f"unknown {label}: no such directory")
    return path


def local_files(root: Path) -> list[str]:
    """Every file below `root`, relative to it, as the Hub lists a repo's files."""
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]


def pickles(files) -> list[str]:
    return sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))


def no_safetensors(label: str, where: str, files) -> ModelNotAvailable:
    """The error for weights that are not safetensors: names the pickles found, says how to convert."""
    found = f"only pickle weights {pickles(files)[:3]}" if pickles(files) else "no .safetensors"
    return ModelNotAvailable(
        f"{label}: {where} has no safetensors weights ({found}); sdkit never loads pickle checkpoints, because "
        "unpickling can run arbitrary code. Use a repo, revision or mirror that ships .safetensors, or convert it "
        "once (diffusers' conversion scripts; transformers: `save_pretrained(..., safe_serialization=True)`).")


@contextlib.contextmanager
def hub_errors(repo_id: str, label: str, revision: str | None = None, hint: str = ""):
    """huggingface_hub's errors as ModelNotAvailable (a malformed id: ValueError), saying what to do."""
    from huggingface_hub.errors import (
        GatedRepoError, HFValidationError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    how_to = (f"On a machine with network: `hf download {repo_id}` (log in with `hf auth login` for gated "
              f"models), then copy the Hugging Face cache{hint}.")
    try:
        yield
    except HFValidationError:
        raise ValueError(f"{label} is neither a local path nor a valid Hub id ('org/name')") from None
    except GatedRepoError:
        raise ModelNotAvailable(f"{label} is gated: accept its licence on huggingface.co and log in "
                                "(`hf auth login` or HF_TOKEN).") from None
    except RepositoryNotFoundError:
        raise ModelNotAvailable(f"unknown {label}: not on the Hugging Face Hub (or private: log in). "
                                "Check the spelling.") from None
    except RevisionNotFoundError:
        raise ModelNotAvailable(f"{label} has no revision {revision!r}.") from None
    except LocalEntryNotFoundError:
        raise ModelNotAvailable(f"unknown {label}: not in the local Hugging Face cache, and the Hub cannot be "
                                f"reached (offline: HF_HUB_OFFLINE=1, or no network). {how_to}") from None
    except HfHubHTTPError as e:
        raise ModelNotAvailable(f"{label}: the Hugging Face Hub could not provide it "
                                f"({type(e).__name__}: {str(e).splitlines()[0]}).") from e


def snapshot(repo_id: str, label: str, *, allow_patterns: list[str], revision: str | None = None,
             cache_dir: str | None = None, hint: str = "") -> Path:
    """The local snapshot of `repo_id`'s files matching `allow_patterns`, downloaded if need be."""
    from huggingface_hub import snapshot_download

    with hub_errors(repo_id, label, revision, hint):
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=allow_patterns))


def repo_files(repo_id: str, snapshot_dir: Path, label: str, revision: str | None = None) -> list[str]:
    """Every file of the repo (the Hub's list), or offline, those of the snapshot on disk."""
    from huggingface_hub import HfApi
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if HF_HUB_OFFLINE:
        return local_files(snapshot_dir)
    with hub_errors(repo_id, label, revision):
        return HfApi().list_repo_files(repo_id, revision=revision)


# --- CLIPs ------------------------------------------------------------------------------------------------

# Only what scoring needs; never *.bin / *.pt / *.msgpack / *.h5 (pickle or other frameworks),
# and not OpenCLIP's own `open_clip_model.safetensors` that LAION repos also carry.
CLIP_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
              "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
              "special_tokens_map.json", "preprocessor_config.json"]


def resolve_clip(model: str | os.PathLike, revision: str | None = None,
                 cache_dir: str | None = None) -> str:
    """A local directory holding the config.json and safetensors weights of CLIP `model` (a Hub id is downloaded)."""
    name = os.fspath(model)
    label = f"CLIP {name!r}"
    if looks_like_path(name):
        path = local_dir(name, label)
    else:
        path = snapshot(name, label, allow_patterns=CLIP_FILES, revision=revision, cache_dir=cache_dir,
                        hint="; or pass a directory with config.json and model.safetensors")
    config_file = path / "config.json"
    if not config_file.exists():
        raise ModelNotAvailable(f"{name!r} is not a CLIP checkpoint: no config.json in {path}")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "clip":
        raise ModelNotAvailable(f"{name!r} is not a CLIP checkpoint: config.json says model_type={model_type!r}, "
                                "expected 'clip' (a full CLIPModel with text and vision towers)")
    files = local_files(path)
    if not {"model.safetensors", "model.safetensors.index.json"} & set(files):
        if not looks_like_path(name):  # only the allowed files were downloaded: ask the Hub what else there is
            with contextlib.suppress(ModelNotAvailable, ValueError):  # unreachable: say what the cache holds
                files = repo_files(name, path, label, revision)
        raise no_safetensors(label, "the checkpoint", files)
    return str(path)


# A processor's files: what a CLIP needs besides its weights to read prompts and images.
PROCESSOR_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "preprocessor_config.json"]


def resolve_processor(processor: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None) -> str:
    """A local folder with a CLIP's tokenizer and preprocessor_config.json (a Hub id: those files only, no weights)."""
    name = os.fspath(processor)
    label = f"processor {name!r}"
    if looks_like_path(name):
        return str(local_dir(name, label))
    return str(snapshot(name, label, allow_patterns=PROCESSOR_FILES, revision=revision, cache_dir=cache_dir))
