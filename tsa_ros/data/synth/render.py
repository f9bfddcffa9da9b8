"""Rasteriser for the synthetic street world: geometry, z-buffer, shading, textures, effects.

Pipeline of :func:`render_frame`, one module per stage:

1. *Meshing* (:mod:`~tsa_ros.data.synth.mesh`): every object of the scene becomes planar 3D
   polygons (boxes with only their camera-facing faces, camera-facing quads for poles, limbs
   and tree crowns) tagged with a Cityscapes label id, a material and colours.
2. *Rasterisation* (:mod:`~tsa_ros.data.synth.raster`): polygons are clipped against the
   near plane, projected with the pinhole camera and filled with ``cv2.fillPoly``
   (``LINE_8``, no anti-aliasing) into a polygon-id buffer. Ground polygons are painted
   back-to-front (they never hide anything standing on them); everything else goes through
   a z-buffer on ``1/Z``, which is affine in the pixel coordinates for a planar polygon.
3. *Deferred shading* (:mod:`~tsa_ros.data.synth.shading`): per pixel, the polygon id gives
   the label and the surface; the 3D point is recovered from the depth, so materials
   (asphalt, paving, facades with windows, foliage, signs ...) are evaluated in world or
   surface coordinates and stay glued to the world as the camera moves. The label map is
   ``label[polygon id]``: every label pixel is exactly the class of the surface drawn there.
4. *Image effects* (:mod:`~tsa_ros.data.synth.effects`, RGB only): cast shadows, haze by
   distance, white balance, saturation, contrast, vignetting, blur and sensor noise.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from tsa_ros.data.camera import CameraModel
from tsa_ros.data.synth.effects import apply_effects, shadow_masks
from tsa_ros.data.synth.mesh import M_HOOD, UP, emit_ground, emit_scene
from tsa_ros.data.synth.raster import (
    SHIFT,
    PolygonTables,
    camera_pose,
    hood_polygon,
    rasterize,
    to_fixed,
)
from tsa_ros.data.synth.scene import EGO_VEHICLE, FPS, NUM_FRAMES, Scene
from tsa_ros.data.synth.shading import shade_frame


def render_frame(
    scene: Scene,
    frame: int,
    camera: CameraModel,
    rng_seed: int | None = None,
    *,
    effects: bool = True,
    return_depth: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render frame ``frame`` (0..29, 17 Hz) of ``scene`` with ``camera``'s intrinsics.

    The camera's size and intrinsics come from ``camera``; its mounting (height, pitch, roll,
    yaw) from the scene (``scene.camera_for(camera)``). ``rng_seed`` only seeds the per-frame
    sensor noise (default: derived from the scene seed and the frame). ``effects=False``
    renders flat-shaded geometry without textures, shadows, haze or sensor effects.

    Returns ``rgb`` (H, W, 3) uint8 and ``label_ids`` (H, W) uint8 with Cityscapes label ids;
    with ``return_depth=True`` also the Euclidean depth in metres (inf for sky).
    """
    if not 0 <= int(frame) < NUM_FRAMES:
        raise ValueError(f'frame must be in [0, {NUM_FRAMES - 1}], got {frame}')
    cam = scene.camera_for(camera)
    width, height = int(cam.width), int(cam.height)
    if width < 1 or height < 1:
        raise ValueError(f'image size must be positive, got {width}x{height}')
    t = int(frame) / FPS
    eye, rot, yaw_c = camera_pose(scene, cam, t)
    tan_h = max(cam.cx + 1, width - cam.cx) / cam.fx

    # 1. Meshing.
    ground = emit_ground(scene, eye)
    objects = emit_scene(scene, t, eye, yaw_c, tan_h)
    tables = PolygonTables([ground, objects], extra=1)
    # The bonnet is one extra polygon id after the meshes', drawn in image space.
    hood_id = tables.count
    tables.label[hood_id] = EGO_VEHICLE
    tables.mat[hood_id] = M_HOOD
    tables.col[hood_id] = scene.hood.color
    tables.normal[hood_id] = UP

    # 2. Rasterisation.
    ground_ids, object_ids, zbuf = rasterize(ground, objects, tables, eye, rot, cam)
    polygon_ids = np.where(object_ids >= 0, object_ids, ground_ids)
    hood = to_fixed(hood_polygon(scene, width, height))
    cv2.fillPoly(polygon_ids, [hood], hood_id, cv2.LINE_8, SHIFT)
    labels = tables.label[polygon_ids]

    # 3. Deferred shading (with effects, the ground is lit through its shadow masks).
    ground_light = (
        shadow_masks(objects, ground_ids, object_ids, eye, rot, cam, scene) if effects else None
    )
    shaded = shade_frame(
        scene,
        tables,
        cam,
        eye,
        rot,
        polygon_ids,
        zbuf,
        len(ground),
        hood_id,
        textures=effects,
        ground_light=ground_light,
    )
    rgb, pix, poly_id = shaded.rgb, shaded.pix, shaded.poly_id

    # 4. Image effects.
    if effects:
        dist = np.full(height * width, np.inf, np.float32)
        dist[pix] = np.where(poly_id == hood_id, np.float32(np.inf), shaded.dist)
        out = apply_effects(
            rgb.reshape(height, width, 3),
            dist.reshape(height, width),
            labels,
            scene,
            frame,
            rng_seed,
        )
    else:
        out = np.clip(rgb.reshape(height, width, 3) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if return_depth:
        depth = np.full(height * width, np.inf, np.float32)
        depth[pix] = shaded.dist
        depth[pix[poly_id == hood_id]] = np.inf
        return out, labels, depth.reshape(height, width)
    return out, labels


def label_histogram(label_maps: Iterable[np.ndarray]) -> dict[int, float]:
    """Fraction of pixels per Cityscapes label id over a collection of label maps."""
    counts = np.zeros(256, np.int64)
    for label_map in label_maps:
        counts += np.bincount(np.asarray(label_map, np.uint8).ravel(), minlength=256)
    total = counts.sum()
    if total == 0:
        return {}
    return {int(i): float(counts[i] / total) for i in np.flatnonzero(counts)}
