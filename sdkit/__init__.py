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


def _quiet_known_noise() -> None:
    # transformers 5 warns on every import that CLIPImageProcessor falls back to its PIL
    # implementation without torchvision. That fallback is what sdkit relies on (PyPI
    # torchvision does not match every torch build), so the warning only adds noise.
    import logging

    class _DropTorchvisionFallback(logging.Filter):
        def filter(self, record):
            return "requires torchvision" not in record.getMessage()

    logging.getLogger("transformers").addFilter(_DropTorchvisionFallback())
    for name in ("transformers.image_processing_utils", "transformers.models.auto.image_processing_auto"):
        logging.getLogger(name).addFilter(_DropTorchvisionFallback())


_quiet_known_noise()
