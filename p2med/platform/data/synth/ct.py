"""Axial chest CT phantoms in Hounsfield units, with findings drawn in 3D.

Volume axes are (slice, row, column) = (z from inferior to superior, y from anterior to
posterior, x from the patient's right to left): the LPS patient frame that DICOM uses, so
the series geometry in `dicom.py` is a plain scaling of these indices. The lobes follow
`anatomy.LOBE_BANDS` from apex to base; the right middle lobe is the anterior part of its
band and lesions in the lower lobes sit posterior, so a lesion projects onto the same
frontal zone as on the X-ray.
"""

from __future__ import annotations

import numpy as np

from p2med.platform.data.synth.anatomy import LOBE_BANDS, ChestLayout
from p2med.platform.data.vocabulary import Finding

HU_AIR, HU_LUNG, HU_FAT, HU_SOFT, HU_BONE = -1000.0, -840.0, -100.0, 40.0, 700.0
# Lungs span this share of the scan's z range (apex near the top slice).
LUNG_TOP, LUNG_BOTTOM = 0.95, 0.1


def volume_grid(slices: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised coordinates: z (S,1,1) in [0,1] inferior to superior; y (1,N,1) and
    x (1,1,N) in [-0.5, 0.5], anterior to posterior and patient right to left."""
    z = (np.arange(slices, dtype=np.float32) + 0.5) / slices
    xy = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    return z[:, None, None], xy[None, :, None], xy[None, None, :]


def lung_depth(z: np.ndarray, hyper: bool) -> np.ndarray:
    """`t` of each slice: 0 at the lung apex, 1 at the base (beyond: outside the lungs)."""
    bottom = LUNG_BOTTOM - (0.06 if hyper else 0.0)
    return (LUNG_TOP - z) / (LUNG_TOP - bottom)


def heart_mask(layout: ChestLayout, z: np.ndarray, y: np.ndarray, x: np.ndarray, hyper: bool) -> np.ndarray:
    """The heart: an ellipsoid low in the chest, left of the midline. Grid axes as from
    `volume_grid`; returns (S, N, N) bool."""
    t = lung_depth(z, hyper)
    return ((x - layout.heart_x * 0.6) / 0.13) ** 2 + ((y + 0.06) / 0.11) ** 2 + ((t - 0.8) / 0.28) ** 2 <= 1


def spine_mask(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A vertebral body behind the heart, on every slice. Returns (1, N, N) bool."""
    return (x / 0.045) ** 2 + ((y - 0.22) / 0.045) ** 2 <= 1


def lung_masks(
    layout: ChestLayout, z: np.ndarray, y: np.ndarray, x: np.ndarray, hyper: bool
) -> dict[str, np.ndarray]:
    """Each lung as a solid that narrows towards the apex, less the heart and spine.
    (S, N, N) bool per side."""
    t = lung_depth(z, hyper)
    inside = (t >= 0) & (t <= 1) & ~heart_mask(layout, z, y, x, hyper) & ~spine_mask(y, x)
    scale = 0.45 + 0.55 * np.sin(np.pi / 2 * np.clip(t / 0.7, 0, 1))
    masks = {}
    for side in ("right", "left"):
        dx = (x - layout.lung_centre(side) * 0.95) / (layout.lung_half_width * 1.05 * scale)
        dy = (y - 0.02) / (0.2 * scale)
        masks[side] = inside & (dx * dx + dy * dy <= 1)
    return masks


def lobe_mask_3d(
    layout: ChestLayout,
    z: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    lungs: dict[str, np.ndarray],
    lobe: str,
    hyper: bool,
) -> np.ndarray:
    """Voxels of `lobe`: its apex-to-base band of the lung; the middle lobe is anterior and
    the right lower lobe takes the posterior part of the band above it. (S, N, N) bool."""
    side = "right" if lobe.startswith("right") else "left"
    t = lung_depth(z, hyper)
    lo, hi = LOBE_BANDS[lobe]
    band = (t >= lo) & (t < hi)
    if lobe == "right_middle":
        band = band & (y < 0.02)
    if lobe == "right_lower":
        band = band | ((t >= LOBE_BANDS["right_middle"][0]) & (y >= 0.02))
    return lungs[side] & band


def render_ct(
    layout: ChestLayout, findings: tuple[Finding, ...], slices: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """A chest CT volume. Returns (slices, size, size) float32 in HU."""
    z, y, x = volume_grid(slices, size)
    hyper = any(f.type == "hyperinflation" for f in findings)
    shape = (slices, size, size)
    body = (x / (layout.body_half_width * 1.15)) ** 2 + (y / 0.3) ** 2
    vol = np.where(body <= 1, HU_SOFT, HU_AIR).astype(np.float32) * np.ones(shape, np.float32)
    vol = np.where((body > 0.8) & (body <= 1), HU_FAT, vol)  # subcutaneous fat
    ring = (body > 0.62) & (body <= 0.72)
    angle = np.arctan2(y, x)
    ribs = ring & (np.sin(angle * 9 + z * 40) > 0.6)
    vol = np.where(ribs, HU_BONE, vol)
    lungs = lung_masks(layout, z, y, x, hyper)
    any_lung = lungs["right"] | lungs["left"]
    lung_hu = -905.0 if hyper else HU_LUNG
    vol = np.where(any_lung, lung_hu + rng.normal(0, 25, size=shape).astype(np.float32), vol)
    t = lung_depth(z, hyper)
    vol = np.where(heart_mask(layout, z, y, x, hyper), HU_SOFT, vol)
    vol = np.where(spine_mask(y, x), HU_BONE, vol)
    vol = np.where((t > 1) & (body <= 0.75), 60.0, vol)  # liver and spleen below the diaphragm
    for finding in findings:
        vol = _draw_finding(vol, layout, finding, (z, y, x), lungs, hyper, rng)
    return vol + rng.normal(0, 12, size=shape).astype(np.float32)


def _draw_finding(
    vol: np.ndarray,
    layout: ChestLayout,
    finding: Finding,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    lungs: dict[str, np.ndarray],
    hyper: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """`vol` (S, N, N) HU with `finding` drawn in; `grid` is `volume_grid`'s (z, y, x)."""
    z, y, x = grid
    t = lung_depth(z, hyper)
    if finding.lobe is not None:
        lobe = lobe_mask_3d(layout, z, y, x, lungs, finding.lobe, hyper)
        lo, hi = LOBE_BANDS[finding.lobe]
        count = 1 if finding.type == "consolidation" else int(rng.integers(4, 7))
        radius = (0.1, 0.16) if finding.type == "consolidation" else (0.05, 0.08)
        lesion = np.zeros(vol.shape, dtype=bool)
        outward = -1.0 if finding.side == "right" else 1.0
        for _ in range(count):
            ct = rng.uniform(lo + 0.3 * (hi - lo), hi - 0.3 * (hi - lo))
            cx = layout.lung_centre(finding.side) + outward * rng.uniform(0.0, 0.3) * layout.lung_half_width
            cy = -0.06 if finding.lobe == "right_middle" else rng.uniform(0.02, 0.1)
            r = rng.uniform(*radius)
            lesion |= ((x - cx) / r) ** 2 + ((y - cy) / r) ** 2 + ((t - ct) / (2.2 * r)) ** 2 <= 1
        hu = 30.0 if finding.type == "consolidation" else -350.0
        return np.where(lesion & lobe, hu, vol)
    both = lungs["right"] | lungs["left"]
    if finding.type == "interstitial_opacity":
        reticular = rng.random(vol.shape) < 0.18
        perihilar = np.abs(t - 0.45) < 0.35
        return np.where(both & reticular & perihilar, -550.0, vol)
    if finding.type == "pleural_effusion":
        # Fluid layers posteriorly (dependent) in the lower half of the hemithorax.
        fluid = lungs[finding.side] & (t > 0.55) & (y > 0.12 - 0.25 * (t - 0.55))
        return np.where(fluid, 10.0, vol)
    return vol  # hyperinflation: drawn as lung size and density
