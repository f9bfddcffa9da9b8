"""Rasterisation: near-plane clipping, projection, the polygon-id buffer and the z-buffer.

Stage 2 of :func:`~tsa_ros.data.synth.render.render_frame`. Polygons are clipped against the
near plane (and a guard band), projected with the pinhole camera and filled with
``cv2.fillPoly`` (``LINE_8``, no anti-aliasing, ``SHIFT`` sub-pixel bits) into a polygon-id
buffer. Ground polygons are painted back-to-front (they never hide anything standing on
them); everything else goes through a z-buffer on ``1/Z``, which is affine in the pixel
coordinates for a planar polygon. :class:`PolygonTables` holds the per-polygon attributes
(label, material, colours, surface frame, parameters, 1/Z plane) indexed by polygon id.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Protocol

import cv2
import numpy as np

from tsa_ros.data.camera import CameraModel
from tsa_ros.data.synth.mesh import NPAR, Mesh
from tsa_ros.data.synth.scene import SKY, Scene

NEAR = 0.1  # near clipping plane, metres
SHIFT = 4  # sub-pixel bits for cv2.fillPoly
ONE = 1 << SHIFT

#: One projected polygon: (polygon index, fixed-point pixel polygons, inclusive bbox
#: (u0, u1, v0, v1), 1/Z plane (a, b, c), 1/Z range (lo, hi)).
Projected = tuple[
    int,
    list[np.ndarray],
    tuple[int, int, int, int],
    tuple[float, float, float],
    tuple[float, float],
]


class Polygons(Protocol):
    """What :func:`project_mesh` needs of a mesh: vertex arrays and ring holes by index."""

    verts: list[np.ndarray]
    holes: dict[int, np.ndarray]

    def __len__(self) -> int: ...


# --------------------------------------------------------------------------------------------
# Camera and clipping


def camera_pose(scene: Scene, cam: CameraModel, t: float) -> tuple[np.ndarray, np.ndarray, float]:
    """World position of the camera, world->camera rotation (rows: right, down, forward), yaw."""
    x, y, yaw, dpitch = scene.ego.pose(t)
    yaw_c = yaw + cam.yaw
    pitch = cam.pitch + dpitch
    cos_yaw, sin_yaw = math.cos(yaw_c), math.sin(yaw_c)
    cos_pitch, sin_pitch = math.cos(pitch), math.sin(pitch)
    fwd = np.array([cos_pitch * cos_yaw, cos_pitch * sin_yaw, -sin_pitch])
    right = np.array([sin_yaw, -cos_yaw, 0.0])
    down = np.cross(fwd, right)
    cos_roll, sin_roll = math.cos(cam.roll), math.sin(cam.roll)
    rot = np.stack([cos_roll * right + sin_roll * down, -sin_roll * right + cos_roll * down, fwd])
    return np.array([x, y, cam.mount_height]), rot, yaw_c


def _clip(pts: np.ndarray, normal: np.ndarray, offset: float) -> np.ndarray:
    """Sutherland-Hodgman: keep the part of a polygon with pts @ normal + offset >= 0."""
    dist = pts @ normal + offset
    out = []
    count = len(pts)
    for i in range(count):
        nxt = (i + 1) % count
        if dist[i] >= 0:
            out.append(pts[i])
        if (dist[i] >= 0) != (dist[nxt] >= 0):
            frac = dist[i] / (dist[i] - dist[nxt])
            out.append(pts[i] + frac * (pts[nxt] - pts[i]))
    return np.array(out) if out else np.zeros((0, 3))


# --------------------------------------------------------------------------------------------
# Polygon attributes, projection, rasterisation


class PolygonTables:
    """Per-polygon attribute arrays, indexed by polygon id."""

    def __init__(self, meshes: Iterable[Mesh], extra: int) -> None:
        labels, mats, cols, cols2, cols3, normals, frames, params = [], [], [], [], [], [], [], []
        for mesh in meshes:
            labels += mesh.label
            mats += mesh.mat
            cols += mesh.col
            cols2 += mesh.col2
            cols3 += mesh.col3
            normals += mesh.normal
            frames += mesh.frame
            params += [tuple(par) + (0.0,) * (NPAR - len(par)) for par in mesh.params]
        size = len(labels) + extra
        self.label = np.zeros(size + 1, np.uint8)  # last entry: sky (index -1)
        self.mat = np.zeros(size + 1, np.uint8)
        self.col = np.zeros((size + 1, 3), np.float32)
        self.col2 = np.zeros((size + 1, 3), np.float32)
        self.col3 = np.zeros((size + 1, 3), np.float32)
        self.normal = np.zeros((size + 1, 3), np.float32)
        self.origin = np.zeros((size + 1, 3), np.float32)
        self.es = np.zeros((size + 1, 3), np.float32)
        self.et = np.zeros((size + 1, 3), np.float32)
        self.params = np.zeros((size + 1, NPAR), np.float32)
        count = len(labels)
        if count:
            self.label[:count] = labels
            self.mat[:count] = mats
            self.col[:count] = cols
            self.col2[:count] = cols2
            self.col3[:count] = cols3
            self.normal[:count] = normals
            frame = np.array(frames, np.float64)
            self.origin[:count], self.es[:count], self.et[:count] = (
                frame[:, 0:3],
                frame[:, 3:6],
                frame[:, 6:9],
            )
            self.params[:count] = params
        self.label[-1] = SKY
        self.iz_a = np.zeros(size + 1, np.float32)  # 1/Z = a u + b v + c
        self.iz_b = np.zeros(size + 1, np.float32)
        self.iz_c = np.zeros(size + 1, np.float32)
        self.count = count


def project_mesh(
    mesh: Polygons, eye: np.ndarray, rot: np.ndarray, cam: CameraModel
) -> Iterator[Projected]:
    """Per visible polygon: (index, fixed-point pixel polygons, bbox, 1/Z plane, 1/Z range).

    The fixed-point polygons (``cv2.fillPoly`` with ``SHIFT`` sub-pixel bits) are a list of
    the outline plus, for rings, the hole; bbox = (u0, u1, v0, v1) inclusive, clipped to the
    image; the plane gives 1/Z = a u + b v + c.
    """
    if not len(mesh):
        return
    counts = np.array([len(verts) for verts in mesh.verts])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    starts = offsets[:-1]
    world = np.concatenate(mesh.verts)
    cam_pts = (world - eye) @ rot.T
    z = cam_pts[:, 2]
    zmin = np.minimum.reduceat(z, starts)
    zmax = np.maximum.reduceat(z, starts)
    # Exact plane of each polygon in camera coordinates (Newell's method).
    next_idx = np.arange(len(cam_pts)) + 1
    next_idx[offsets[1:] - 1] = starts
    this_pts, next_pts = cam_pts, cam_pts[next_idx]
    newell = np.stack(
        [
            (this_pts[:, 1] - next_pts[:, 1]) * (this_pts[:, 2] + next_pts[:, 2]),
            (this_pts[:, 2] - next_pts[:, 2]) * (this_pts[:, 0] + next_pts[:, 0]),
            (this_pts[:, 0] - next_pts[:, 0]) * (this_pts[:, 1] + next_pts[:, 1]),
        ],
        axis=1,
    )
    normals = np.add.reduceat(newell, starts, axis=0)
    centres = np.add.reduceat(cam_pts, starts, axis=0) / counts[:, None]
    plane_d = np.sum(normals * centres, axis=1)
    scale = np.linalg.norm(normals, axis=1) * np.linalg.norm(centres, axis=1)
    fx, fy, cx, cy = cam.fx, cam.fy, cam.cx, cam.cy
    width, height = cam.width, cam.height
    z_safe = np.where(z > NEAR, z, 1.0)
    uv = np.stack([fx * cam_pts[:, 0] / z_safe + cx, fy * cam_pts[:, 1] / z_safe + cy], axis=1)
    umin = np.minimum.reduceat(uv[:, 0], starts)
    umax = np.maximum.reduceat(uv[:, 0], starts)
    vmin = np.minimum.reduceat(uv[:, 1], starts)
    vmax = np.maximum.reduceat(uv[:, 1], starts)
    iz = 1.0 / z_safe
    izmin = np.minimum.reduceat(iz, starts)
    izmax = np.maximum.reduceat(iz, starts)
    guard = 4.0 * (width + height)
    drawable = (zmax > NEAR) & (np.abs(plane_d) > 1e-7 * np.maximum(scale, 1e-12))
    # Entirely in front of the near plane but outside the image: nothing to draw.
    drawable &= ~(
        (zmin > NEAR)
        & ((umax < -0.5) | (umin > width - 0.5) | (vmax < -0.5) | (vmin > height - 0.5))
    )
    simple = (
        (zmin > NEAR)
        & (umin > -guard)
        & (umax < width + guard)
        & (vmin > -guard)
        & (vmax < height + guard)
    )
    fixed = np.rint(np.clip(uv, -guard, width + height + guard) * ONE).astype(np.int32)
    bbox = np.stack([np.floor(umin), np.ceil(umax), np.floor(vmin), np.ceil(vmax)], axis=1)
    bbox = np.clip(bbox, -1, [width, width, height, height]).astype(np.int64)
    plane_n = normals / np.where(plane_d == 0, 1.0, plane_d)[:, None]
    plane_a = plane_n[:, 0] / fx
    plane_b = plane_n[:, 1] / fy
    plane_c = plane_n[:, 2] - plane_n[:, 0] * cx / fx - plane_n[:, 1] * cy / fy
    for poly in np.flatnonzero(drawable).tolist():
        plane = (plane_a[poly], plane_b[poly], plane_c[poly])
        hole = mesh.holes.get(poly)
        if simple[poly]:
            polys = [fixed[offsets[poly] : offsets[poly + 1]]]
            u0, u1, v0, v1 = bbox[poly].tolist()
            iz_range = (izmin[poly], izmax[poly])
        else:
            pts = _clip(
                cam_pts[offsets[poly] : offsets[poly + 1]], np.array([0.0, 0.0, 1.0]), -NEAR
            )
            # Guard band: keep projected coordinates in a sane range.
            for guard_plane in (
                (-fx, 0.0, guard - cx),
                (fx, 0.0, guard + cx),
                (0.0, -fy, guard - cy),
                (0.0, fy, guard + cy),
            ):
                if len(pts) < 3:
                    break
                pts = _clip(pts, np.array(guard_plane), 0.0)
            if len(pts) < 3:
                continue
            clipped_uv = np.stack(
                [fx * pts[:, 0] / pts[:, 2] + cx, fy * pts[:, 1] / pts[:, 2] + cy], axis=1
            )
            polys = [np.rint(clipped_uv * ONE).astype(np.int32)]
            u0, v0 = (
                max(math.floor(clipped_uv[:, 0].min()), 0),
                max(math.floor(clipped_uv[:, 1].min()), 0),
            )
            u1 = min(math.ceil(clipped_uv[:, 0].max()), width - 1)
            v1 = min(math.ceil(clipped_uv[:, 1].max()), height - 1)
            iz_range = (float(np.min(1 / pts[:, 2])), float(np.max(1 / pts[:, 2])))
            hole = None  # rings are small and never clipped in practice
        u0, v0 = max(u0, 0), max(v0, 0)
        u1, v1 = min(u1, width - 1), min(v1, height - 1)
        if u1 < u0 or v1 < v0:
            continue
        if hole is not None:
            hole_cam = (hole - eye) @ rot.T
            if np.all(hole_cam[:, 2] > NEAR):
                hole_uv = np.stack(
                    [
                        fx * hole_cam[:, 0] / hole_cam[:, 2] + cx,
                        fy * hole_cam[:, 1] / hole_cam[:, 2] + cy,
                    ],
                    axis=1,
                )
                polys.append(np.rint(hole_uv * ONE).astype(np.int32))
        yield poly, polys, (u0, u1, v0, v1), plane, iz_range


def to_fixed(uv: np.ndarray) -> np.ndarray:
    """Pixel coordinates as ``cv2.fillPoly`` fixed point (``SHIFT`` fractional bits)."""
    return np.rint(uv * ONE).astype(np.int32)


def rasterize(
    ground: Mesh,
    objects: Mesh,
    tables: PolygonTables,
    eye: np.ndarray,
    rot: np.ndarray,
    cam: CameraModel,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground-id buffer, object-id buffer (ids offset by ``len(ground)``) and 1/Z buffer.

    Also stores every drawn polygon's 1/Z plane in ``tables`` (the shading pass recovers
    the ground's depth from it).
    """
    width, height = cam.width, cam.height
    ground_ids = np.full((height, width), -1, np.int32)
    n_ground = len(ground)
    # Ground: painter's order, no depth test (it never hides what stands on it).
    for poly, polys, _, plane, _ in project_mesh(ground, eye, rot, cam):
        cv2.fillPoly(ground_ids, polys, poly, cv2.LINE_8, SHIFT)
        tables.iz_a[poly], tables.iz_b[poly], tables.iz_c[poly] = plane
    # Everything else: z-buffer on 1/Z (larger = nearer).
    object_ids = np.full((height, width), -1, np.int32)
    zbuf = np.zeros((height, width), np.float32)
    u_coords = np.arange(width, dtype=np.float32)
    v_coords = np.arange(height, dtype=np.float32)
    for poly, polys, (u0, u1, v0, v1), plane, (iz_lo, iz_hi) in project_mesh(
        objects, eye, rot, cam
    ):
        mask = np.zeros((v1 - v0 + 1, u1 - u0 + 1), np.uint8)
        cv2.fillPoly(mask, polys, 1, cv2.LINE_8, SHIFT, (-u0 * ONE, -v0 * ONE))
        plane_a, plane_b, plane_c = plane
        inv_z = (np.float32(plane_a) * u_coords[u0 : u1 + 1])[None, :] + (
            np.float32(plane_b) * v_coords[v0 : v1 + 1] + np.float32(plane_c)
        )[:, None]
        # 1/Z is affine over the polygon, so its extremes are at the vertices; clamping keeps
        # pixels whose centres lie just outside a near edge-on polygon sane.
        inv_z.clip(np.float32(iz_lo * 0.999), np.float32(iz_hi * 1.001), out=inv_z)
        zbuf_box = zbuf[v0 : v1 + 1, u0 : u1 + 1]
        nearer = inv_z > zbuf_box
        nearer &= mask.view(bool)
        np.copyto(zbuf_box, inv_z, where=nearer)
        np.copyto(object_ids[v0 : v1 + 1, u0 : u1 + 1], n_ground + poly, where=nearer)
        (
            tables.iz_a[n_ground + poly],
            tables.iz_b[n_ground + poly],
            tables.iz_c[n_ground + poly],
        ) = plane
    return ground_ids, object_ids, zbuf


class Soup:
    """Bare polygons (no attributes) for :func:`project_mesh`."""

    def __init__(self, verts: list[np.ndarray]) -> None:
        self.verts = verts
        self.holes: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.verts)


def hood_polygon(scene: Scene, width: int, height: int) -> np.ndarray:
    """The bonnet's outline in pixel coordinates (an image-space polygon, drawn last)."""
    hood = scene.hood
    us = np.linspace(-1.0, width, 33)
    centre_u = hood.centre_x * width
    half = max(centre_u, width - centre_u)
    falloff = ((us - centre_u) / half) ** 2
    centre_h = hood.centre_height * height
    heights = centre_h * (1 - (1 - hood.side_height) * falloff)
    top = np.stack([us, height - 0.5 - heights], axis=1)
    return np.vstack([[[width + 1.0, height + 1.0], [-1.0, height + 1.0]], top])
