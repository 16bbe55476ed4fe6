"""Images as pixels: EDM's uint8 quantisation and PNG files named by seed, as NVlabs/edm's generate.py writes them,
so that every tool reading our images (Inception, the grids, an external FID script) sees the same bytes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdm.io import atomic_path


def to_uint8(images) -> torch.Tensor:
    """[-1, 1] float images (a tensor or an array) as 0..255 uint8, as EDM does: x * 127.5 + 128, clipped, then
    truncated (not rounded) to an integer."""
    return (torch.as_tensor(images).float() * 127.5 + 128).clip(0, 255).to(torch.uint8)


def png_path(outdir: Path, seed: int, subdirs: bool) -> Path:
    """EDM's name for seed s's image: <outdir>/[<s - s % 1000>/]<s:06d>.png."""
    return Path(outdir) / (f"{seed - seed % 1000:06d}" if subdirs else "") / f"{seed:06d}.png"


def pil_image(pixels: np.ndarray) -> Image.Image:
    """An (h, w, c) uint8 image as PIL's: greyscale (L) for one channel, else RGB."""
    return Image.fromarray(pixels[:, :, 0], "L") if pixels.shape[2] == 1 else Image.fromarray(pixels, "RGB")


def save_pngs(images, seeds, outdir, subdirs: bool = False) -> None:
    """(n, c, h, w) images in [-1, 1] as one PNG per seed: greyscale (L) for one channel, else RGB."""
    pixels = to_uint8(images).permute(0, 2, 3, 1).numpy()
    for seed, px in zip(np.asarray(seeds).tolist(), pixels):
        image = pil_image(px)
        with atomic_path(png_path(outdir, seed, subdirs)) as tmp:
            image.save(tmp, format="PNG")
