"""Frame effects: cast and contact shadows on the ground, then image-only camera effects.

Stage 4 of :func:`~tsa_ros.data.synth.render.render_frame` (only with ``effects=True``).
:func:`shadow_masks` rasterises the shadow polygons the meshing collected into soft
per-pixel light factors for the ground, which the shading pass applies. :func:`apply_effects`
then works on the shaded float image alone: haze by distance, the scene reflected in the
bonnet, exposure, white balance, saturation and contrast (one affine colour transform),
vignetting, optics blur, sensor noise and gamma.
"""

from __future__ import annotations

import functools
from statistics import NormalDist

import cv2
import numpy as np

from tsa_ros.data.camera import CameraModel
from tsa_ros.data.synth.mesh import Mesh
from tsa_ros.data.synth.raster import SHIFT, Soup, project_mesh
from tsa_ros.data.synth.scene import EGO_VEHICLE, Scene


def shadow_masks(
    objects: Mesh,
    ground_ids: np.ndarray,
    object_ids: np.ndarray,
    eye: np.ndarray,
    rot: np.ndarray,
    cam: CameraModel,
    scene: Scene,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel sun visibility and ambient occlusion on the ground (1 = lit), flat arrays.

    The shadow polygons lie on the ground plane, so only pixels showing the ground itself
    are darkened.
    """
    width, height = cam.width, cam.height
    sunlit = np.ones(height * width, np.float32)
    occl = np.ones(height * width, np.float32)
    ground_px = (object_ids < 0) & (ground_ids >= 0)
    sigma = max(0.6, 1.2 * width / 1024)
    for shadows, target, strength in (
        (objects.shadows, sunlit, 0.85),
        (objects.contact, occl, 0.45),
    ):
        if not shadows or (target is sunlit and scene.style.sun_strength <= 0.05):
            continue
        soup = Soup([np.c_[poly, np.zeros(len(poly))] for poly in shadows])
        mask = np.zeros((height, width), np.uint8)
        for _, fixed, _, _, _ in project_mesh(soup, eye, rot, cam):
            cv2.fillPoly(mask, fixed, 255, cv2.LINE_8, SHIFT)
        soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), sigma)
        soft = np.where(ground_px, soft, 0.0)
        target[:] = (1.0 - strength * soft).ravel()
    return sunlit, occl


def apply_effects(
    rgb: np.ndarray,
    dist: np.ndarray,
    labels: np.ndarray,
    scene: Scene,
    frame: int,
    rng_seed: int | None,
) -> np.ndarray:
    """Image-only effects on a float RGB image; returns uint8."""
    style = scene.style
    height, width = labels.shape
    # Haze towards the horizon colour with distance (sky and bonnet have dist = inf).
    haze_w = 1.0 - np.exp(-dist / np.float32(style.haze_distance))
    haze_w[~np.isfinite(dist)] = 0.0
    haze = np.empty_like(rgb)
    haze[:] = np.array(style.haze_color, np.float32)
    rgb = cv2.blendLinear(rgb, haze, 1.0 - haze_w, haze_w)
    # The bonnet mirrors the scene above it, blurred.
    hood = labels == EGO_VEHICLE
    if scene.hood.reflect > 0 and hood[-1].any():
        top = int(np.flatnonzero(hood.any(axis=1)).min())
        rows = height - top
        if 0 < rows <= top:
            ksize = max(1, int(width / 100)) * 2 + 1
            mirrored = cv2.GaussianBlur(
                np.ascontiguousarray(rgb[top - rows : top][::-1]), (ksize, ksize), 0
            )
            reflect = np.float32(scene.hood.reflect)
            band = rgb[top:]
            np.copyto(
                band, band * (1 - reflect) + mirrored * (reflect * 0.6), where=hood[top:, :, None]
            )
    # Camera response as one affine colour transform: exposure, white balance, saturation and
    # contrast around mid grey.
    sat = style.saturation
    sat_matrix = sat * np.eye(3) + (1 - sat) / 3.0 * np.ones((3, 3))
    response = (
        style.contrast * sat_matrix @ np.diag(style.exposure * np.array(style.white_balance))
    )
    offset = 0.45 * (1 - style.contrast)
    rgb = cv2.transform(rgb, np.c_[response, np.full(3, offset)].astype(np.float32))
    rgb *= _vignette(width, height, float(style.vignetting))[..., None]
    # Optics blur and sensor noise (signal dependent, partly correlated across channels).
    sigma = style.blur_sigma * width / 1024
    if sigma >= 0.25:
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigma)
    seed = rng_seed if rng_seed is not None else (scene.seed * 1000003 + 7919 * int(frame) + 1)
    rng = np.random.default_rng(seed)
    # Gaussian noise through a 256-entry inverse-CDF table: ~5x cheaper than standard_normal.
    noise = np.take(_normal_table(), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    noise += noise[..., 1:2]  # luma-like common component
    rgb += noise * (np.float32(style.noise_sigma * 0.6) * (rgb + np.float32(0.15)))
    out = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(out, _gamma_lut(round(float(style.gamma), 3)))


@functools.lru_cache(maxsize=1)
def _normal_table() -> np.ndarray:
    """Standard normal quantiles at the centres of 256 equal-probability bins."""
    return np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)


@functools.lru_cache(maxsize=8)
def _vignette(width: int, height: int, strength: float) -> np.ndarray:
    """Per-pixel gain falling off towards the corners (elliptical, wider than high)."""
    yy = (np.arange(height, dtype=np.float32) - height / 2) / (height / 2)
    xx = (np.arange(width, dtype=np.float32) - width / 2) / (width / 2)
    r2 = (xx[None, :] ** 2) * 0.6 + (yy[:, None] ** 2) * 0.4
    return (1 - strength * 0.5 * r2).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _gamma_lut(gamma: float) -> np.ndarray:
    """uint8 -> uint8 lookup table of the sensor's gamma curve."""
    return np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)
