"""sdkit: Stable Diffusion candidates, CLIP reranking and ranked grids for notebooks."""

__version__ = "0.1.0"
