"""sdkit: Stable Diffusion candidates, CLIP reranking and ranked grids for notebooks."""

__version__ = "0.1.0"

from .candidate import Candidate, Run  # noqa: E402
from .edit import img2img, inpaint, outpaint  # noqa: E402
from .fingerprint import fingerprint  # noqa: E402
from .generate import Progress, generate, regenerate  # noqa: E402
from .load import load_pipeline  # noqa: E402
from .masks import box_mask, show_mask  # noqa: E402
from .save import read_manifest, read_metadata  # noqa: E402

__all__ = [
    "Candidate", "Run", "Progress", "generate", "regenerate", "load_pipeline", "read_manifest", "read_metadata",
    "img2img", "inpaint", "outpaint", "box_mask", "show_mask", "fingerprint",
]
