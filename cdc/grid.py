"""Tile images into one labelled grid image (for notebooks and the CLI)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def make_grid(
    images: np.ndarray,
    ncols: int,
    pad: int = 2,
    labels: list[str] | None = None,
    scale: int = 2,
    background: int = 255,
) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 grid (rows*(H*scale+pad+label_h)+pad, ...,  3), nearest upscaling.

    Each label is drawn in a strip under its cell with PIL's default font, cut to the cell width.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"make_grid needs uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    n = len(images)
    if n == 0:
        raise ValueError("make_grid: no images")
    if ncols < 1 or scale < 1 or pad < 0:
        raise ValueError(f"make_grid: need ncols >= 1, scale >= 1, pad >= 0 (got {ncols}, {scale}, {pad})")
    if labels is not None and len(labels) != n:
        raise ValueError(f"make_grid: {len(labels)} labels for {n} images")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    big = images.repeat(scale, axis=1).repeat(scale, axis=2)  # (N, H*s, W*s, 3)
    h, w = big.shape[1:3]
    font = ImageFont.load_default() if labels is not None else None
    label_h = 12 if labels is not None else 0
    cell_h, cell_w = h + label_h + pad, w + pad
    canvas = Image.new("RGB", (ncols * cell_w + pad, nrows * cell_h + pad), (background,) * 3)
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, ncols)
        x, y = pad + c * cell_w, pad + r * cell_h
        canvas.paste(Image.fromarray(big[i]), (x, y))
        if labels is not None:
            draw.text((x, y + h), _fit(draw, labels[i], w, font), fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font: ImageFont.ImageFont | None) -> str:
    """Cut `text` so that it fits in `width` pixels."""
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    return text
