"""Write a diffusers folder as one single-file checkpoint in the original (LDM / A1111) key layout, for tests.

The mapping is that of diffusers' `scripts/convert_diffusers_to_original_stable_diffusion.py` and
`scripts/convert_diffusers_to_original_sdxl.py`, with their hard-coded block counts (4 levels of 2 layers for
SD 1.x/2.x, 3 for SDXL) taken from the folder's own configs instead, so the tiny models convert too.

    to_single_file(tiny_folder, tmp_path / "tiny.safetensors")
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"), ("out_layers.3", "conv2"),
          ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]  # (original, diffusers)
UNET_TOP = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
            ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
            ("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2.")]


def unet_prefixes(config: dict, keys) -> list[tuple[str, str]]:
    """(original, diffusers) block prefixes; the scripts' `3 * i + j` is `(layers_per_block + 1) * i + j`."""
    n, levels = config["layers_per_block"] + 1, len(config["block_out_channels"])
    out = [("middle_block.1.", "mid_block.attentions.0."), ("middle_block.0.", "mid_block.resnets.0."),
           ("middle_block.2.", "mid_block.resnets.1.")]
    for i in range(levels):
        for j in range(n - 1):
            out += [(f"input_blocks.{n * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."),
                    (f"input_blocks.{n * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}.")]
        for j in range(n):
            out += [(f"output_blocks.{n * i + j}.0.", f"up_blocks.{i}.resnets.{j}."),
                    (f"output_blocks.{n * i + j}.1.", f"up_blocks.{i}.attentions.{j}.")]
        if i < levels - 1:
            out.append((f"input_blocks.{n * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            # The upsampler follows the resnet, and the attention if the block has one.
            attn = any(k.startswith(f"up_blocks.{i}.attentions.") for k in keys)
            out.append((f"output_blocks.{n * i + n - 1}.{2 if attn else 1}.", f"up_blocks.{i}.upsamplers.0."))
    return out


def unet_to_ldm(sd: dict, config: dict) -> dict:
    prefixes = unet_prefixes(config, sd)
    out = {}
    for k, v in sd.items():
        name = next((o + k[len(d):] for o, d in UNET_TOP if k.startswith(d)), None)
        if name is None:
            o, d = next((o, d) for o, d in prefixes if k.startswith(d))
            rest = k[len(d):]
            if "resnets." in d:
                for a, b in RESNET:
                    rest = rest.replace(b, a)
            name = o + rest
        out["model.diffusion_model." + name] = v
    return out


def vae_to_ldm(sd: dict, config: dict) -> dict:
    """The VAE: up blocks numbered in reverse, attention as 1x1 convolutions."""
    levels = len(config["block_out_channels"])
    pairs = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"), ("mid.attn_1.", "mid_block.attentions.0.")]
    for i in range(levels):
        pairs += [(f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.") for j in range(3)]
        pairs += [(f"decoder.up.{levels - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}.") for j in range(4)]
        pairs += [(f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."),
                  (f"up.{levels - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0.")]
    pairs += [(f"mid.block_{i + 1}.", f"mid_block.resnets.{i}.") for i in range(2)]
    attn = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
    out = {}
    for k, v in sd.items():
        name = k
        for o, d in pairs:
            name = name.replace(d, o)
        if "attentions" in k:
            for o, d in attn:
                name = name.replace(d, o)
            if v.ndim == 2:  # linear -> 1x1 conv
                v = v[:, :, None, None]
        out["first_stage_model." + name] = v
    return out


def clip_to_ldm(sd: dict, prefix: str) -> dict:
    """OpenAI CLIP (SD 1.x, SDXL's first encoder): the transformers names under a prefix."""
    return {prefix + ("" if k.startswith("text_model.") else "text_model.") + k: v
            for k, v in sd.items() if not k.endswith("position_ids")}


OPEN_CLIP = [("transformer.resblocks.", "text_model.encoder.layers."), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
             (".c_fc.", ".fc1."), (".c_proj.", ".fc2."), (".attn", ".self_attn"), ("ln_final.", "text_model.final_layer_norm."),
             ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
             ("positional_embedding", "text_model.embeddings.position_embedding.weight")]
_OPEN_CLIP_RE = re.compile("|".join(re.escape(d) for _, d in OPEN_CLIP))


def open_clip_to_ldm(sd: dict, prefix: str) -> dict:
    """OpenCLIP (SD 2.x, SDXL's second encoder): q, k, v in one in_proj; the projection transposed."""
    rename = dict((d, o) for o, d in OPEN_CLIP)
    out, qkv = {}, {}
    for k, v in sd.items():
        k = k if k.startswith(("text_model.", "text_projection")) else "text_model." + k
        if k.endswith("position_ids"):
            continue
        if k == "text_projection.weight":
            out[prefix + "text_projection"] = v.T.contiguous()
            continue
        m = re.match(r"(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$", k)
        if m:
            qkv.setdefault((m[1] + ".self_attn", m[3]), {})[m[2]] = v
            continue
        out[prefix + _OPEN_CLIP_RE.sub(lambda x: rename[x[0]], k)] = v
    for (base, kind), parts in qkv.items():
        name = _OPEN_CLIP_RE.sub(lambda x: rename[x[0]], base)
        out[f"{prefix}{name}.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _weights(folder: Path, name: str) -> tuple[dict, dict]:
    files = [f for f in (folder / name).glob("*.safetensors") if ".fp16." not in f.name]
    (file,) = files
    return load_file(file), json.loads((folder / name / "config.json").read_text())


def to_single_file(folder, dst) -> Path:
    """Write the diffusers pipeline `folder` as one original-layout `.safetensors` file at `dst`."""
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    state = {}
    unet, config = _weights(folder, "unet")
    state.update(unet_to_ldm(unet, config))
    state.update(vae_to_ldm(*_weights(folder, "vae")))
    te = index.get("text_encoder") not in (None, [None, None])
    if "text_encoder_2" in index:  # SDXL: CLIP-L then OpenCLIP-bigG; the refiner has only the second
        if te:
            state.update(clip_to_ldm(_weights(folder, "text_encoder")[0], "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_ldm(_weights(folder, "text_encoder_2")[0],
                                      f"conditioner.embedders.{1 if te else 0}.model."))
    else:
        sd, config = _weights(folder, "text_encoder")
        # SD 2.x's text encoder is OpenCLIP; diffusers' script tells them apart by depth, a tiny one by its activation.
        if config.get("hidden_act") == "gelu":
            state.update(open_clip_to_ldm(sd, "cond_stage_model.model."))
        else:
            state.update(clip_to_ldm(sd, "cond_stage_model.transformer."))
    save_file({k: v.contiguous() for k, v in state.items()}, str(dst))
    return Path(dst)
