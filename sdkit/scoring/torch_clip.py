"""`TorchCLIPScorer`: CLIP scores from transformers' PyTorch `CLIPModel` (imports no JAX)."""

from __future__ import annotations

import numpy as np

from sdkit.load.hub import resolve_clip
from sdkit.scoring.base import DEFAULT_CLIP, CLIPScorer


class TorchCLIPScorer(CLIPScorer):
    """CLIP scores from transformers' PyTorch `CLIPModel` on one device ("auto": cuda, mps, else cpu).

    Args:
        model: Hub id or local directory of a CLIP checkpoint (safetensors only, never pickle).
        device: torch device or "auto" (picked as for pipelines: `sdkit.load.devices.resolve_device`).
        dtype: None for float32, or a torch dtype / name ("float16", "bfloat16").
        batch_size: images per forward pass.
    """

    backend = "torch"

    def __init__(self, model: str = DEFAULT_CLIP, *, device="auto", dtype=None, batch_size: int = 16,
                 revision: str | None = None, cache_dir: str | None = None, **verifier):
        import torch
        from transformers import CLIPModel

        from sdkit.load.devices import resolve_device
        from sdkit.quiet import quiet_hf

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        path = resolve_clip(model, revision, cache_dir)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or torch.float32)
        self.device, self.dtype, self.batch_size = torch.device(resolve_device(device)), dtype, batch_size
        with quiet_hf():
            self.model = CLIPModel.from_pretrained(path, use_safetensors=True, dtype=dtype).to(self.device).eval()
        super().__init__(str(model), path, float(self.model.logit_scale.detach().float()),
                         self.model.config.text_config.max_position_embeddings, **verifier)

    def _encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            ids = torch.from_numpy(input_ids.astype(np.int64)).to(self.device)
            e = self.model.get_text_features(input_ids=ids).pooler_output.float()
            return (e / e.norm(dim=-1, keepdim=True)).cpu().numpy()

    def _per_batch(self, pixel_values, fn) -> np.ndarray:
        """fn(start, normalised image embeddings) for each batch of `batch_size` images, concatenated."""
        import torch

        out = []
        with torch.inference_mode():
            for a in range(0, len(pixel_values), self.batch_size):
                x = pixel_values[a:a + self.batch_size]
                x = (x if torch.is_tensor(x) else torch.from_numpy(x)).to(self.device, self.dtype)
                e = self.model.get_image_features(pixel_values=x).pooler_output.float()
                out.append(fn(a, e / e.norm(dim=-1, keepdim=True)).cpu().numpy())
        return np.concatenate(out)

    def _cosine(self, pixel_values: np.ndarray, index: np.ndarray, text: np.ndarray) -> np.ndarray:
        import torch

        t = torch.from_numpy(text).to(self.device)
        i = torch.from_numpy(index.astype(np.int64)).to(self.device)
        return self._per_batch(pixel_values, lambda a, e: (e * t[i[a:a + self.batch_size]]).sum(-1))

    def _image_embeds(self, pixel_values) -> np.ndarray:
        return self._per_batch(pixel_values, lambda a, e: e)
