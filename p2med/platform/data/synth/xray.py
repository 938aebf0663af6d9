"""Frontal (PA) pediatric chest X-ray phantoms with findings drawn into the pixels.

The image is an attenuation map (bright = dense, as MONOCHROME2 displays it): torso,
lungs, heart, spine, ribs and diaphragm, plus each finding in its lobe or side. Sizes and
contrast are chosen so that a finding's lobe stays visible after downsizing to 96 px.
"""

from __future__ import annotations

import numpy as np

from p2med.platform.data.synth.anatomy import (
    ChestLayout,
    depth_fraction,
    heart_mask_2d,
    lesion_centre,
    lobe_mask_2d,
    lung_mask_2d,
)
from p2med.platform.data.synth.textures import smooth_noise, soft_ellipse
from p2med.platform.data.vocabulary import Finding

BITS_STORED = 12
MAX_VALUE = 2**BITS_STORED - 1


def image_grid(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates (x across, y down) of every pixel, image height = 1.
    Returns x: (1, cols) and y: (rows, 1), which broadcast to (rows, cols)."""
    x = ((np.arange(cols, dtype=np.float32) + 0.5) - cols / 2) / rows
    y = (np.arange(rows, dtype=np.float32) + 0.5) / rows
    return x[None, :], y[:, None]


def render_xray(
    layout: ChestLayout, findings: tuple[Finding, ...], shape: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """A chest X-ray as stored pixel values. Returns (rows, cols) uint16 in [0, 4095]."""
    rows, cols = shape
    x, y = image_grid(rows, cols)
    lungs = {s: lung_mask_2d(layout, x, y, s) for s in ("right", "left")}
    any_lung = lungs["right"] | lungs["left"]
    hyper = any(f.type == "hyperinflation" for f in findings)

    att = np.full(shape, 0.04, dtype=np.float32)
    body = soft_ellipse(x / layout.body_half_width, (y - 0.52) / 0.62, edge=0.05)
    shoulders = soft_ellipse(x / (layout.body_half_width + 0.06), (y - 0.1) / 0.12, edge=0.2)
    att += 0.5 * np.maximum(body, shoulders)
    att += 0.1 * (y > layout.base_y - 0.01) * body  # abdomen below the diaphragm
    lung_density = 0.14 if hyper else 0.2
    att = np.where(any_lung, lung_density + 0.04 * smooth_noise(rng, shape, 24), att)
    midline = np.abs(x - layout.midline_x)
    # Vascular markings fan out from the hila: the lungs are denser medially.
    att += any_lung * 0.05 * np.clip(1.3 - midline / (2 * layout.lung_half_width), 0, 1)
    att += 0.12 * (midline < 0.05) * (y > 0.05) * body  # mediastinum
    att = np.where(heart_mask_2d(layout, x, y), np.maximum(att, 0.58), att)
    att += 0.1 * (midline < 0.025) * body  # spine
    att += _ribs(layout, x, y) * body
    for finding in findings:
        att += _finding_density(layout, finding, x, y, lungs, rng)

    exposure = rng.uniform(0.92, 1.08)
    att = att * exposure + rng.normal(0.0, 0.012, size=shape).astype(np.float32)
    return np.clip(att * 3400 + 150, 0, MAX_VALUE).astype(np.uint16)


def _ribs(layout: ChestLayout, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Posterior rib arcs: thin dense bands curving down and outwards. x: (1, W), y: (H, 1);
    returns (H, W) float32 extra attenuation."""
    spacing = (layout.base_y - layout.apex_y) / 8.5
    curve = y - 1.2 * (x - layout.midline_x) ** 2
    phase = ((curve - layout.apex_y) / spacing) % 1.0
    band = (phase < 0.22) & (np.abs(x - layout.midline_x) > 0.035) & (curve > layout.apex_y - 0.02)
    return 0.07 * band.astype(np.float32)


def _finding_density(
    layout: ChestLayout,
    finding: Finding,
    x: np.ndarray,
    y: np.ndarray,
    lungs: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """Extra attenuation a finding adds. (rows, cols) float32."""
    shape = (y.shape[0], x.shape[1])
    if finding.lobe is not None:
        lobe = lobe_mask_2d(layout, x, y, finding.lobe)
        height = layout.base_y - layout.apex_y
        centres = (
            [lesion_centre(layout, finding.lobe, rng)]
            if finding.type == "consolidation"
            else [lesion_centre(layout, finding.lobe, rng) for _ in range(int(rng.integers(4, 7)))]
        )
        size = (0.9, 0.22) if finding.type == "consolidation" else (0.35, 0.08)
        blob = np.zeros(shape, dtype=np.float32)
        for off, t in centres:
            cx = layout.lung_centre(finding.side) + off * layout.lung_half_width
            cy = layout.apex_y + t * height
            dx = (x - cx) / (size[0] * layout.lung_half_width)
            dy = (y - cy) / (size[1] * height)
            blob = np.maximum(blob, soft_ellipse(dx, dy, edge=0.3))
        texture = 1.0 + 0.15 * smooth_noise(rng, shape, 32)
        strength = 0.34 if finding.type == "consolidation" else 0.24
        # Lobar disease stops at the fissure: clip to the lobe.
        return strength * blob * texture * lobe
    if finding.type == "interstitial_opacity":
        both = lungs["right"] | lungs["left"]
        reticular = np.abs(smooth_noise(rng, shape, 90)) < 0.35
        perihilar = np.clip(1.3 - np.abs(depth_fraction(layout, y) - 0.45) * 2.2, 0, 1)
        return 0.1 * both * reticular * perihilar
    if finding.type == "pleural_effusion":
        lung = lungs[finding.side]
        # Fluid fills the costophrenic angle with a meniscus rising laterally.
        lateral = np.abs(x - layout.lung_centre(finding.side)) / layout.lung_half_width
        level = layout.base_y - (0.16 + 0.08 * lateral) * (layout.base_y - layout.apex_y)
        return 0.36 * (lung & (y > level)).astype(np.float32)
    return np.zeros(shape, dtype=np.float32)  # hyperinflation: drawn as lung geometry and density
