"""Smooth random fields: the cheap noise that gives synthetic images tissue texture."""

from __future__ import annotations

import numpy as np
from PIL import Image


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-scale noise varying over about `cells` blobs per side. (H, W) float32."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((shape[1], shape[0]), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def soft_ellipse(dx: np.ndarray, dy: np.ndarray, edge: float = 0.15) -> np.ndarray:
    """1 inside the unit ellipse `dx² + dy² < 1`, 0 outside, with a soft rim of width `edge`."""
    r = np.sqrt(dx * dx + dy * dy)
    return np.clip((1.0 + edge - r) / (2 * edge), 0.0, 1.0).astype(np.float32)
