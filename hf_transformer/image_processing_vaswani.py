"""`VaswaniImageProcessor`: images -> the `pixel_values` (B, C, H, W) that `VaswaniForImageCaptioning` reads.

Resize to image_size x image_size, rescale to [0, 1], normalise per channel with `image_mean` / `image_std`.
`save_pretrained` writes `preprocessor_config.json` with an `auto_map` entry and copies this file next to it, so
`AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)` works where this package is not installed.
This file imports only numpy, PIL and transformers.
"""

import numpy as np
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling

#: Per-channel mean and standard deviation of the normalisation: 0.5 maps [0, 1] to [-1, 1] (as ViT does).
DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.5


class VaswaniImageProcessor(PilBackend):
    """PIL images or (H, W, C) / (C, H, W) uint8 arrays -> float `pixel_values` (B, num_channels, size, size).

    Grayscale, RGBA or palette PIL images are converted to RGB when `num_channels` is 3 (`do_convert_rgb`); an
    array whose channel count is not `num_channels` raises a ValueError naming both.
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    size = {"height": 224, "width": 224}
    image_mean = (DEFAULT_MEAN,) * 3
    image_std = (DEFAULT_STD,) * 3

    @classmethod
    def for_model(cls, image_size: int, num_channels: int = 3) -> "VaswaniImageProcessor":
        """The processor matching a model config's `image_size` and `num_channels` (1 = grayscale, 3 = RGB)."""
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"`image_size` must be a positive integer, got {image_size!r}.")
        if num_channels not in (1, 3):
            raise ValueError(f"`num_channels` must be 1 (grayscale) or 3 (RGB), got {num_channels!r}.")
        return cls(
            size={"height": image_size, "width": image_size},
            image_mean=[DEFAULT_MEAN] * num_channels,
            image_std=[DEFAULT_STD] * num_channels,
            do_convert_rgb=num_channels == 3,
        )

    @property
    def num_channels(self) -> int:
        """Channels of the output, read from the normalisation statistics (one mean per channel)."""
        return len(self.image_mean) if isinstance(self.image_mean, (list, tuple)) else 3

    def process_image(self, image, *args, **kwargs) -> np.ndarray:
        """One image -> channels-first array; a grayscale PIL image for a 1-channel model stays single-channel."""
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 4:
            # An RGBA array (H, W, 4) goes through PIL so that every supported transformers converts it to RGB
            # (transformers 5.18 infers an array's channels only among 1 and 3, and fails on it).
            image = Image.fromarray(image)
        image = super().process_image(image, *args, **kwargs)  # (C, H, W)
        if image.shape[0] != self.num_channels:
            raise ValueError(
                f"An image has {image.shape[0]} channels but this processor produces num_channels="
                f"{self.num_channels} (its image_mean/image_std have {self.num_channels} values): convert the image "
                f"(e.g. PIL `image.convert('RGB')` or `.convert('L')`) or pass a PIL image with do_convert_rgb=True."
            )
        return image


__all__ = ["VaswaniImageProcessor"]
