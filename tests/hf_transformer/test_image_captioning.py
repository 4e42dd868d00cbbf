"""Image captioning model: the image fields of the config, the patch encoder's inputs and order, and the image
processor. (Training, generation and remote code of a captioning model: tests/lightning_modules/test_captioning.py.)"""

import json

import numpy as np
import pytest
import torch
from model_utils import CAPTION_IMAGE_SIZE as IMAGE_SIZE
from model_utils import tiny_caption_config
from PIL import Image
from transformers import AutoImageProcessor

from hf_transformer import VaswaniConfig, VaswaniForImageCaptioning, VaswaniImageProcessor


def test_image_fields_of_the_config_are_checked():
    assert tiny_caption_config().image_size == IMAGE_SIZE
    assert VaswaniConfig().image_size is None  # text models carry no image geometry
    with pytest.raises(ValueError, match="`image_size` \\(30\\) must be divisible by `patch_size` \\(4\\)"):
        tiny_caption_config(image_size=30)
    with pytest.raises(ValueError, match="256 patches, more than `max_position_embeddings`=64"):
        tiny_caption_config(image_size=64, patch_size=4)
    with pytest.raises(ValueError, match="set both `image_size` and `patch_size`"):
        VaswaniConfig(image_size=32)
    with pytest.raises(ValueError, match="`num_channels` must be a positive integer"):
        tiny_caption_config(num_channels=0)
    with pytest.raises(ValueError, match="needs `image_size` and `patch_size`"):
        VaswaniForImageCaptioning(VaswaniConfig(vocab_size=300, d_model=32))


def test_wrong_image_size_or_channels_get_a_clear_error():
    model = VaswaniForImageCaptioning(tiny_caption_config()).eval()
    labels = torch.tensor([[5, 6, 2]])
    assert model(pixel_values=torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), labels=labels).logits.shape == (1, 3, 300)
    for shape in [(1, 3, 32, 32), (1, 1, IMAGE_SIZE, IMAGE_SIZE), (3, IMAGE_SIZE, IMAGE_SIZE)]:
        with pytest.raises(ValueError, match=r"\(batch, 3, 16, 16\) for this model, got " + repr(shape).replace(
                "(", "\\(").replace(")", "\\)")):
            model(pixel_values=torch.zeros(shape), labels=labels)


def test_the_encoder_reads_patches_in_row_major_order_with_positions():
    """Patch n of the encoder input is the linear projection of the n-th P x P patch (row-major) plus PE(n)."""
    torch.manual_seed(0)
    model = VaswaniForImageCaptioning(tiny_caption_config(encoder_layers=1)).eval()
    pixels = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    hidden = model.get_encoder()(pixels, output_hidden_states=True).hidden_states[0]  # embeddings: (1, 16, 32)
    weight = model.encoder.patch_embedding.weight.reshape(32, -1)  # (D, C * P * P)
    patch = pixels[0, :, 4:8, 8:12].reshape(-1)  # grid row 1, column 2: patch number 1 * 4 + 2 = 6
    expected = weight @ patch + model.encoder.patch_embedding.bias + model.encoder.embed_positions(torch.tensor(6))
    torch.testing.assert_close(hidden[0, 6], expected, rtol=1e-5, atol=1e-5)
    assert model.get_encoder().main_input_name == "pixel_values"


def test_image_processor_resizes_rescales_normalises_and_checks_channels(tmp_path):
    processor = VaswaniImageProcessor.for_model(IMAGE_SIZE, num_channels=3)
    array = np.zeros((40, 24, 3), dtype=np.uint8)
    array[:, :, 0] = 255  # pure red
    pixel_values = processor([Image.fromarray(array), Image.fromarray(array).convert("L")],
                             return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(pixel_values[0, 0], torch.ones(IMAGE_SIZE, IMAGE_SIZE))  # 255 -> 1 -> (1 - .5) / .5
    torch.testing.assert_close(pixel_values[0, 1], -torch.ones(IMAGE_SIZE, IMAGE_SIZE))
    assert torch.allclose(pixel_values[1, 0], pixel_values[1, 1])  # grayscale converted to RGB: equal channels
    rgba = processor([np.full((20, 20, 4), 255, dtype=np.uint8)], return_tensors="pt")["pixel_values"]
    assert rgba.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)  # RGBA converted to RGB
    gray = VaswaniImageProcessor.for_model(IMAGE_SIZE, num_channels=1)
    assert gray([Image.fromarray(array).convert("L")], return_tensors="pt")["pixel_values"].shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="An image has 3 channels but this processor produces num_channels=1"):
        gray([array])

    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["auto_map"] == {"AutoImageProcessor": "image_processing_vaswani.VaswaniImageProcessor"}
    assert (tmp_path / "image_processing_vaswani.py").is_file()
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is VaswaniImageProcessor and loaded.size["height"] == IMAGE_SIZE
