"""Where the lungs and their lobes are, shared by the X-ray and CT renderers.

Coordinates are normalised: `x` runs across the patient from their right (negative) to
their left (positive), as image columns do in the radiological convention; `t` runs down
each lung from apex (0) to base (1). A lobe is a band of `t` in one lung (the right
middle lobe is also anterior in CT). Keeping one definition makes a lesion drawn "in the
right lower lobe" land there in both modalities, and lets tests check pixels against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from p2med.platform.data.vocabulary import Lobe

# Apex-to-base bands of each lobe, as seen on a frontal image.
LOBE_BANDS: dict[str, tuple[float, float]] = {
    "right_upper": (0.0, 0.38),
    "right_middle": (0.38, 0.62),
    "right_lower": (0.62, 1.0),
    "left_upper": (0.0, 0.55),
    "left_lower": (0.55, 1.0),
}


@dataclass(frozen=True)
class ChestLayout:
    """One patient's chest geometry in normalised units (image height = 1).

    Attributes:
        midline_x: the spine and mediastinum (0 is the image centre).
        lung_x: centre of the right and left lung (right is negative).
        lung_half_width: half width of each lung.
        apex_y, base_y: top and bottom of the lungs on a frontal image.
        heart_x, heart_y, heart_rx, heart_ry: the heart's ellipse on a frontal image.
        body_half_width: half width of the torso.
    """

    midline_x: float
    lung_x: tuple[float, float]
    lung_half_width: float
    apex_y: float
    base_y: float
    heart_x: float
    heart_y: float
    heart_rx: float
    heart_ry: float
    body_half_width: float

    def lung_centre(self, side: str) -> float:
        return self.lung_x[0] if side == "right" else self.lung_x[1]


def sample_layout(rng: np.random.Generator, hyperinflated: bool) -> ChestLayout:
    """Random but plausible geometry; hyperinflated lungs are taller and reach lower."""
    spread = rng.uniform(0.16, 0.19)
    shift = rng.uniform(-0.015, 0.015)
    apex = rng.uniform(0.13, 0.18)
    base = apex + rng.uniform(0.54, 0.6) * (1.12 if hyperinflated else 1.0)
    return ChestLayout(
        midline_x=shift,
        lung_x=(shift - spread, shift + spread),
        lung_half_width=rng.uniform(0.12, 0.135),
        apex_y=apex,
        base_y=min(base, 0.86),
        heart_x=shift + rng.uniform(0.03, 0.05),
        heart_y=apex + (base - apex) * rng.uniform(0.68, 0.75),
        heart_rx=rng.uniform(0.10, 0.12),
        heart_ry=rng.uniform(0.085, 0.1),
        body_half_width=rng.uniform(0.33, 0.37),
    )


def lung_mask_2d(layout: ChestLayout, x: np.ndarray, y: np.ndarray, side: str) -> np.ndarray:
    """Frontal lung field of one side: a half-ellipse flattened at the apex. Shapes broadcast."""
    cy = (layout.apex_y + layout.base_y) / 2
    ry = (layout.base_y - layout.apex_y) / 2
    dx = (x - layout.lung_centre(side)) / layout.lung_half_width
    dy = (y - cy) / ry
    return (dx**2 + dy**2 <= 1.0) & (y >= layout.apex_y)


def heart_mask_2d(layout: ChestLayout, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return ((x - layout.heart_x) / layout.heart_rx) ** 2 + ((y - layout.heart_y) / layout.heart_ry) ** 2 <= 1


def depth_fraction(layout: ChestLayout, y: np.ndarray) -> np.ndarray:
    """`t`: 0 at the lung apex, 1 at the base, for frontal-image rows `y`."""
    return (y - layout.apex_y) / (layout.base_y - layout.apex_y)


def lobe_mask_2d(layout: ChestLayout, x: np.ndarray, y: np.ndarray, lobe: Lobe) -> np.ndarray:
    """Pixels of a frontal image that show `lobe` clear of the heart shadow."""
    side = "right" if lobe.startswith("right") else "left"
    lo, hi = LOBE_BANDS[lobe]
    t = depth_fraction(layout, y)
    band = (t >= lo) & (t < hi)
    return lung_mask_2d(layout, x, y, side) & band & ~heart_mask_2d(layout, x, y)


def lesion_centre(layout: ChestLayout, lobe: Lobe, rng: np.random.Generator) -> tuple[float, float]:
    """(x offset from the lung centre in half-widths, t) well inside `lobe`'s band."""
    lo, hi = LOBE_BANDS[lobe]
    t = rng.uniform(lo + 0.3 * (hi - lo), hi - 0.3 * (hi - lo))
    # Lateral half of the lung: clear of the heart and mediastinum.
    outward = -1.0 if lobe.startswith("right") else 1.0
    return outward * rng.uniform(0.1, 0.35), t
