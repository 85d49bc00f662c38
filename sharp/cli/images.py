"""Reading image files for the commands: RGB uint8 arrays, or an error that names the file.

(sharp.refsr.data.load_image is the training data's reader: a float tensor [1, 3, H, W].)"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load_rgb_array(path: str) -> np.ndarray:
    """RGB image file -> uint8 array [H, W, 3]."""
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image file PIL can read") from None
