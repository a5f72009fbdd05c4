"""Convert the verifiers whose official weights are pickles into safetensors, once, on the user's machine:

    python -m sdkit.scoring.convert aesthetic sac+logos+ava1-l14-linearMSE.pth   # LAION aesthetic predictor v2
    python -m sdkit.scoring.convert hpsv2 HPS_v2.1_compressed.pt                 # HPS v2.1 (open_clip ViT-H-14)

Each pickle is read with `torch.load(weights_only=True)` (tensors and plain containers only; `sdkit.load.single_file
.read_pickle_state`), never a full unpickle. The output goes where `sdkit.scoring.verifiers` looks by default
(`$SDKIT_CACHE/verifiers/`), or to the path given second. HPS v2.1 becomes a transformers `CLIPModel` folder
(config.json + model.safetensors), so both scorer backends load it as any CLIP.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# open_clip's ViT-H-14 (its model_configs/ViT-H-14.json) as transformers' CLIPConfig: what HPS v2.1 fine-tuned.
VIT_H_14 = dict(
    projection_dim=1024,
    text_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     hidden_act="gelu", max_position_embeddings=77, vocab_size=49408, eos_token_id=49407,
                     bos_token_id=49406, pad_token_id=1),
    vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                       hidden_act="gelu", image_size=224, patch_size=14),
)

# open_clip names -> transformers' CLIPModel names, outside the residual blocks.
OPEN_CLIP_TOP = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight", "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "visual.proj": "visual_projection.weight",  # (width, embed_dim), used as x @ proj: transposed
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias",
    "text_projection": "text_projection.weight",  # (width, embed_dim), used as x @ text_projection: transposed
    "logit_scale": "logit_scale",
}
# Inside a residual block (`transformer.resblocks.{i}.`); attn.in_proj_* is split into q, k, v below.
OPEN_CLIP_BLOCK = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
TRANSPOSED = ("visual.proj", "text_projection")
BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+?)[._](weight|bias)$")  # [._]: attn.in_proj_weight


def open_clip_to_transformers(state: dict) -> dict:
    """An open_clip CLIP state dict (ViT towers, `module.` prefixes allowed) in transformers' `CLIPModel` names."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")  # saved from DistributedDataParallel
        if key == "attn_mask" or key.endswith(".attn_mask"):  # the causal mask: a buffer, not a weight
            continue
        block = BLOCK.match(key)
        if block:
            visual, i, part, kind = block.groups()
            prefix = f"{'vision_model' if visual else 'text_model'}.encoder.layers.{i}."
            if part == "attn.in_proj":  # nn.MultiheadAttention's packed [q; k; v]
                for name, chunk in zip("qkv", value.chunk(3)):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = chunk.clone()
            elif part in OPEN_CLIP_BLOCK:
                out[f"{prefix}{OPEN_CLIP_BLOCK[part]}.{kind}"] = value
            else:
                raise ValueError(f"open_clip key {key!r} has no CLIPModel counterpart (layer scale, attention pooling "
                                 "and other towers are not converted)")
        elif key in OPEN_CLIP_TOP:
            out[OPEN_CLIP_TOP[key]] = value.T.contiguous() if key in TRANSPOSED else value
        else:
            raise ValueError(f"open_clip key {key!r} has no CLIPModel counterpart; expected a ViT CLIP's "
                             f"({sorted(OPEN_CLIP_TOP)[:4]}..., transformer.resblocks.*)")
    return out


def convert_open_clip(checkpoint, out_dir, config: dict = VIT_H_14) -> Path:
    """An open_clip checkpoint (pickle) -> a transformers CLIPModel folder; the weights must fit `config` exactly."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    from sdkit.load.single_file import read_pickle_state

    state = open_clip_to_transformers(read_pickle_state(checkpoint))
    with torch.device("meta"):
        expected = CLIPModel(CLIPConfig(**config)).state_dict()
    expected = {k: tuple(v.shape) for k, v in expected.items() if not k.endswith("position_ids")}
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    wrong = sorted(f"{k}: {tuple(state[k].shape)} (config says {expected[k]})"
                   for k in expected.keys() & state.keys() if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        raise ValueError(f"{checkpoint}: does not fit the CLIP config: missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}, wrong shapes {wrong[:4]}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    CLIPConfig(**config).to_json_file(str(out_dir / "config.json"))
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(out_dir / "model.safetensors"))
    return out_dir


def convert_aesthetic(checkpoint, out_file) -> Path:
    """The LAION aesthetic predictor v2's .pth -> safetensors, checked as the scorer checks it."""
    from safetensors.torch import save_file

    from sdkit.load.single_file import read_pickle_state
    from sdkit.scoring.verifiers import read_aesthetic_head

    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float() for k, v in read_pickle_state(checkpoint).items()}, str(out_file))
    try:
        read_aesthetic_head(out_file)
    except ValueError:
        out_file.unlink()
        raise
    return out_file


def main(argv=None) -> int:
    from sdkit.scoring.verifiers import AESTHETIC_HEAD, HPSV2, converted

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) not in (2, 3) or argv[0] not in ("aesthetic", "hpsv2"):
        sys.stderr.write(__doc__.split("\n\n")[0] + "\n")
        return 2
    kind, src = argv[0], argv[1]
    if kind == "aesthetic":
        out = convert_aesthetic(src, argv[2] if len(argv) == 3 else converted(AESTHETIC_HEAD))
    else:
        out = convert_open_clip(src, argv[2] if len(argv) == 3 else converted(HPSV2))
    sys.stdout.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
