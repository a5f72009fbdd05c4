"""Textual-inversion embeddings on a pipeline: `.safetensors` files in A1111's layout (`emb_params`, or
`string_to_param.*`), diffusers' (`{"<token>": tensor}`) or SDXL's (`clip_l` and `clip_g`), loaded through diffusers'
`load_textual_inversion`, checked before they are, and recorded with every image.

    pipe = load_pipeline("sdkit:tiny", embeddings=["~/embeddings/mystyle.safetensors"])
    generate(pipe, "a cat, mystyle")            # A1111's token: the file name; diffusers' files name their own

An embedding adds a token to the tokenizer and a row to the text encoder's input embeddings, so the pipeline cache
keys a model's modules on its embedding files (their sha256) as it does on LoRAs: a pipeline without them never
gets a tokenizer or text encoder that has them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from sdkit.quiet import quiet_hf
from sdkit.load.hub import PICKLE_SUFFIXES


@dataclasses.dataclass(frozen=True)
class Embedding:
    """One textual-inversion file, as checked by `check_embeddings`."""

    path: str  # as the user gave it: what is recorded, and what `regenerate` opens again
    token: str  # what a prompt writes to use it
    file: Path
    sha256: str  # of the whole file; A1111's "TI hashes" take its first 12 hex

    @property
    def name(self) -> str:
        return self.token

    def record(self) -> dict:
        return {"path": self.path, "file": str(self.file.resolve()), "token": self.token, "sha256": self.sha256}


def _file(path: str) -> Path:
    where = Path(path).expanduser()
    if where.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"embedding {path!r} is a pickle ({where.suffix}); sdkit loads embeddings from .safetensors "
                         "only, because unpickling can run arbitrary code")
    if not where.is_file():
        raise FileNotFoundError(f"embedding {path!r}: no such file")
    if where.suffix.lower() != ".safetensors":
        raise ValueError(f"embedding {path!r}: not a .safetensors file")
    return where


def vectors(file: Path) -> tuple[dict, str | None]:
    """The file's vectors by text encoder ({"text_encoder": ..., "text_encoder_2": ...}) and the token it names
    (diffusers' layout), or None (A1111's: the file name is the token)."""
    from safetensors.torch import load_file

    d = load_file(str(file))
    if "clip_l" in d or "clip_g" in d:  # SDXL: one set per text encoder
        return {k: d[v] for k, v in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")) if v in d}, None
    found = d.get("emb_params")
    if found is None:
        found = next((t for k, t in d.items() if k.startswith("string_to_param")), None)
    if found is not None:
        return {"text_encoder": found}, None
    if len(d) == 1:
        (token, found), = d.items()
        return {"text_encoder": found}, token
    raise ValueError(f"embedding {str(file)!r}: keys {sorted(d)[:5]} are not a textual inversion's (emb_params, "
                     "string_to_param, clip_l/clip_g, or one token)")


def check_embeddings(embeddings) -> tuple[Embedding, ...]:
    """`embeddings` (paths, or {path: token}) checked and hashed in the order given; an error naming the bad one."""
    if not embeddings:
        return ()
    if isinstance(embeddings, (str, os.PathLike)):
        embeddings = [embeddings]
    items = embeddings.items() if isinstance(embeddings, dict) else ((p, None) for p in embeddings)
    out, tokens = [], {}
    for path, token in items:
        path = os.fspath(path)
        file = _file(path)
        own = vectors(file)[1]
        token = token or own or file.stem
        if token in tokens:
            raise ValueError(f"embeddings {tokens[token]!r} and {path!r} both use the token {token!r}; give one a "
                             "token of its own ({path: token})")
        tokens[token] = path
        out.append(Embedding(path, token, file, hashlib.sha256(file.read_bytes()).hexdigest()))
    return tuple(out)


def apply_embeddings(pipe, embeddings: tuple[Embedding, ...]) -> None:
    """Load each embedding into the pipeline's tokenizers and text encoders; one made for another text encoder (its
    width, or SDXL's pair on SD 1.x/2.x and the reverse) is refused by name."""
    for e in embeddings:
        found, _ = vectors(e.file)
        encoders = {k: getattr(pipe, k, None) for k in ("text_encoder", "text_encoder_2")}
        have = {k for k, m in encoders.items() if m is not None}
        want = set(found)
        if pipe.__class__.__name__.startswith("StableDiffusionXL") and "text_encoder_2" in have and want != have:
            raise ValueError(f"embedding {e.path!r} has vectors for {sorted(want)}; this SDXL pipeline needs "
                             f"{sorted(have)} (an SDXL embedding holds clip_l and clip_g)")
        for name, t in found.items():
            enc = encoders.get(name)
            width = enc.get_input_embeddings().weight.shape[1] if enc is not None else None
            if width is None or t.shape[-1] != width:
                raise ValueError(f"embedding {e.path!r} is {t.shape[-1]} wide; this pipeline's {name} takes "
                                 f"{width}-wide token embeddings (is it for another kind of model?)")
            tokenizer = getattr(pipe, "tokenizer" if name == "text_encoder" else "tokenizer_2")
            try:
                with quiet_hf(messages=True):  # transformers' note on how the new token rows start: not ours
                    pipe.load_textual_inversion(t, token=e.token, text_encoder=enc, tokenizer=tokenizer)
            except ValueError as err:  # e.g. the token is already a word of the vocabulary
                raise ValueError(f"embedding {e.path!r}: {err}") from None


def from_records(records) -> dict | None:
    """The `embeddings=` that loads an image's recorded embeddings again, {path: token}; an error naming a file that
    is gone or changed."""
    from sdkit.load.loras import recorded_file

    if not records:
        return None
    return {recorded_file(r, f"embedding {r['path']!r} (token {r['token']!r}, sha256 {r['sha256'][:12]}...)",
                          lambda p: hashlib.sha256(Path(p).expanduser().read_bytes()).hexdigest()): r["token"]
            for r in records}


def check_same(records, pipe) -> None:
    """Refuse to remake an image on a pipeline whose embeddings are not the ones it records."""
    from sdkit.load.state import pipeline_info

    want = [(r["sha256"], r["token"]) for r in records or ()]
    have = [(e.sha256, e.token) for e in pipeline_info(pipe).embeddings]
    if want != have:
        raise ValueError(f"this image was made with embeddings {[t for _, t in want] or 'none'}; the pipeline given "
                         f"has {[t for _, t in have] or 'none'}. Leave pipe= out to load the recorded ones")
