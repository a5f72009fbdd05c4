"""CLIP in flax.linen, loaded from the Hub's safetensors (transformers 5 has no Flax CLIP any more).

    config    config.json as dataclasses (TextConfig, VisionConfig, CLIPConfig)
    modeling  the linen modules (names mirror the PyTorch state dict) and FlaxCLIP, a loaded model
    weights   safetensors -> state dict -> params; load_flax_clip
    scorer    FlaxCLIPScorer, data-parallel over all local JAX devices
    memory    configure_jax_memory (no JAX import)

Importing any module here first sets XLA_PYTHON_CLIENT_PREALLOCATE=false (unless you set an allocator
option), so JAX does not take 75% of the GPU from the PyTorch pipeline.
"""

from sdkit.scoring.flax.memory import configure_jax_memory

configure_jax_memory()  # the package runs before its modules: before any of them imports JAX
