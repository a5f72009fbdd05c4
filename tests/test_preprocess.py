"""sdkit.scoring.preprocess: CLIP's image preprocessing against transformers' CLIPImageProcessor, and on tensors
bit for bit as on PIL images."""

import numpy as np
import pytest
from PIL import Image

from sdkit.models.tiny_clip import tiny_clip_path
from sdkit.scoring.preprocess import ImageConfig, preprocess
from test_flax_clip import realistic_image
from test_scorers import pipeline_output


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip_path()


@pytest.mark.parametrize("size,mode", [((512, 512), "RGB"), ((300, 451), "RGB"), ((451, 300), "L"),
                                       ((768, 512), "RGBA"), ((224, 224), "P"), ((37, 500), "RGB"),
                                       ((150, 100), "CMYK")])
def test_preprocess_matches_clip_image_processor(size, mode):
    """Tolerance: 1e-6 against transformers' PIL backend (same PIL bicubic, same float steps). With
    torchvision installed transformers resizes with torch's antialiased bicubic instead: 0.05."""
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor()  # OpenAI's settings: shortest edge 224, crop 224, bicubic
    image = realistic_image(*size, mode=mode)
    ref = processor(images=[image], return_tensors="np")["pixel_values"]
    tol = 1e-6 if getattr(processor, "backend", "pil") == "pil" else 0.05
    ours = preprocess([image])
    assert ours.shape == ref.shape == (1, 3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=tol, rtol=0)


def test_image_config_reads_every_hub_spelling(tiny):
    openai_style = {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                    "image_mean": [0.48145466, 0.4578275, 0.40821073],
                    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}
    assert ImageConfig.from_dict(openai_style) == ImageConfig()
    assert ImageConfig.from_pretrained(tiny).crop_size == (32, 32)
    with pytest.raises(ValueError, match="longest_edge"):
        ImageConfig.from_dict({"size": {"longest_edge": 3}})


@pytest.mark.parametrize("resample", [Image.Resampling.BICUBIC, Image.Resampling.BILINEAR, Image.Resampling.LANCZOS,
                                      Image.Resampling.BOX, Image.Resampling.HAMMING])
@pytest.mark.parametrize("size", [(64, 64), (512, 512), (40, 56), (56, 40), (20, 24), (33, 300)])
def test_tensor_preprocessing_is_pils_bit_for_bit(resample, size):
    """Pillow's fixed-point resize, reproduced in float64: the same pixels, not merely close ones."""
    from sdkit.scoring.preprocess import ImageConfig, preprocess, preprocess_tensor

    x, pils = pipeline_output(2, size, seed=size[0])
    for config in (ImageConfig(resample=resample), ImageConfig(resample=resample, shortest_edge=32, crop_size=(32, 32)),
                   ImageConfig(resample=resample, shortest_edge=None, size=(30, 50), crop_size=(40, 40))):
        np.testing.assert_array_equal(preprocess_tensor(x, config).numpy(), preprocess(pils, config))
