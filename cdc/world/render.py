"""Render an RGBA glyph to a small square RGB image on white, framed the same way in every style."""

from __future__ import annotations

import numpy as np
from PIL import Image


def render(glyph: Image.Image, size: int = 32, margin: float = 0.06) -> np.ndarray:
    """Crop to the glyph's visible box, centre it on a white square with a margin, resize: uint8 (size, size, 3)."""
    alpha = glyph.getchannel("A")
    box = alpha.point(lambda a: 255 if a > 8 else 0).getbbox()
    if box is None:
        raise ValueError("glyph is empty (fully transparent)")
    crop = glyph.crop(box)
    side = int(round(max(crop.size) * (1 + 2 * margin)))
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
    # LANCZOS keeps the thin OpenMoji outlines visible at 32 px.
    small = canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.uint8)
