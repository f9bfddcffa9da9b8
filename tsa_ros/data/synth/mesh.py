"""Meshing: the scene's objects as planar 3D polygons tagged with label, material and colours.

Stage 1 of :func:`~tsa_ros.data.synth.render.render_frame`. The ground polygons of the road
layout and every object near the camera's view (buildings with windowed facades, walls and
hedges, poles, street lights, traffic lights, signs, trees, vehicles, two-wheelers, people)
become polygons in a :class:`Mesh`: boxes keep only their camera-facing faces; poles, limbs
and tree crowns are camera-facing quads that the material shades round. Each polygon carries a
Cityscapes label id, a material (``M_*``, how :mod:`~tsa_ros.data.synth.shading` shades it),
up to three colours, a surface frame (origin, ``e_s``, ``e_t``) and up to ``NPAR`` material
parameters. Cast shadows and contact shadows are collected as ground-plane polygons for
:mod:`~tsa_ros.data.synth.effects`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from tsa_ros.data.synth.scene import (
    BUILDING,
    POLE,
    STATIC,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    VEGETATION,
    Block,
    Building,
    Color,
    Person,
    Pole,
    Scene,
    Sign,
    StreetLight,
    TrafficLight,
    Tree,
    TwoWheeler,
    Vehicle,
)

# Materials (how the deferred pass shades a polygon's pixels).
(
    M_FLAT,
    M_ROAD,
    M_PAVING,
    M_CURB,
    M_GRASS,
    M_GROUND,
    M_FACADE,
    M_ROOF,
    M_FOLIAGE,
    M_HEDGE,
    M_BARK,
    M_METAL,
    M_GLASS,
    M_PAINT,
    M_BODY,
    M_SIGN,
    M_TLIGHT,
    M_FENCE,
    M_WALL,
    M_TIRE,
    M_HOOD,
) = range(21)
N_MAT = 21
_GROUND_MATS = {
    'road': M_ROAD,
    'parking': M_ROAD,
    'sidewalk': M_PAVING,
    'curb': M_CURB,
    'grass': M_GRASS,
    'ground': M_GROUND,
    'gravel': M_GROUND,
}
NPAR = 13  # material parameters per polygon
UP = np.array([0.0, 0.0, 1.0])

Vec = Sequence[float] | np.ndarray  # a 2D or 3D vector: tuple, list or array
Points = Sequence[Vec] | np.ndarray  # (n, 2) or (n, 3) points
#: Per-face override of a box: ``(edge index, edge length) -> (material, colour, Mesh.add
#: keywords)``, or ``None`` to keep the box's own material for that face.
FaceMat = Callable[[int, float], tuple[int, Color, dict[str, Any]] | None]


# --------------------------------------------------------------------------------------------
# Polygon soup


class Mesh:
    """Polygons collected for one frame, plus their shading attributes."""

    def __init__(self, eye: np.ndarray) -> None:
        self.eye = tuple(float(coord) for coord in eye)
        self.verts: list[np.ndarray] = []
        self.label: list[int] = []
        self.mat: list[int] = []
        self.col: list[Color] = []
        self.col2: list[Color] = []
        self.col3: list[Color] = []
        self.normal: list[tuple[float, float, float]] = []
        self.frame: list[tuple] = []  # origin, e_s, e_t: 9 floats
        self.params: list[tuple] = []
        self.holes: dict[int, np.ndarray] = {}
        self.shadows: list[np.ndarray] = []  # (n, 2) polygons on the ground plane
        self.contact: list[np.ndarray] = []  # darker contact shadows under vehicles

    def __len__(self) -> int:
        return len(self.verts)

    def add(
        self,
        verts: Points,
        label: int,
        mat: int,
        col: Color,
        *,
        normal: Vec | None = None,
        es: Vec | None = None,
        et: Vec | None = None,
        origin: Vec | None = None,
        col2: Color | None = None,
        col3: Color | None = None,
        params: tuple[float, ...] = (),
        cull: bool = True,
        hole: Points | None = None,
    ) -> bool:
        """Add one planar polygon (vertices counter-clockwise seen from its front).

        Small-vector maths is done on Python floats: the per-polygon numpy overhead would
        dominate a frame otherwise.
        """
        points = np.asarray(verts, dtype=np.float64)
        point_list = points.tolist()
        if normal is None:
            normal = _newell(point_list)
        else:
            normal = tuple(float(coord) for coord in normal)
        first = point_list[0]
        if cull:
            eye = self.eye
            if (
                normal[0] * (eye[0] - first[0])
                + normal[1] * (eye[1] - first[1])
                + normal[2] * (eye[2] - first[2])
            ) <= 0.0:
                return False
        if es is None:
            second = point_list[1]
            es = _unit3((second[0] - first[0], second[1] - first[1], second[2] - first[2]))
        if et is None:
            et = _cross3(normal, es)
        frame_origin = first if origin is None else origin
        self.verts.append(points)
        self.label.append(label)
        self.mat.append(mat)
        self.col.append(col)
        self.col2.append(col if col2 is None else col2)
        self.col3.append(col if col3 is None else col3)
        self.normal.append(normal)
        self.frame.append(
            (
                frame_origin[0],
                frame_origin[1],
                frame_origin[2],
                es[0],
                es[1],
                es[2],
                et[0],
                et[1],
                et[2],
            )
        )
        self.params.append(params)
        if hole is not None:
            self.holes[len(self.verts) - 1] = np.asarray(hole, np.float64)
        return True


def _unit3(vec: Vec) -> tuple[float, float, float]:
    norm = math.sqrt(vec[0] * vec[0] + vec[1] * vec[1] + vec[2] * vec[2])
    if norm < 1e-12:
        return (float(vec[0]), float(vec[1]), float(vec[2]))
    return (vec[0] / norm, vec[1] / norm, vec[2] / norm)


def _cross3(a: Vec, b: Vec) -> tuple[float, float, float]:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _unit(vec: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 1e-12 else vec


def _newell(points: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """Unit normal of a planar polygon given as a list of points (right-hand rule)."""
    nx = ny = nz = 0.0
    count = len(points)
    for i in range(count):
        cur, nxt = points[i], points[(i + 1) % count]
        nx += (cur[1] - nxt[1]) * (cur[2] + nxt[2])
        ny += (cur[2] - nxt[2]) * (cur[0] + nxt[0])
        nz += (cur[0] - nxt[0]) * (cur[1] + nxt[1])
    return _unit3((nx, ny, nz))


# --------------------------------------------------------------------------------------------
# Meshing of the world's objects


class Emitter:
    """Turns scene objects into polygons for the camera at ``eye`` looking along ``fwd``."""

    def __init__(
        self, scene: Scene, t: float, eye: np.ndarray, yaw: float, tan_h: float, mesh: Mesh
    ) -> None:
        self.scene = scene
        self.t = t
        self.eye = eye
        self.fwd = np.array([math.cos(yaw), math.sin(yaw)])
        self.tan_h = tan_h
        self.mesh = mesh
        style = scene.style
        elevation, azimuth = style.sun_elevation, style.sun_azimuth
        self.sun = np.array(
            [
                math.cos(elevation) * math.cos(azimuth),
                math.cos(elevation) * math.sin(azimuth),
                math.sin(elevation),
            ]
        )
        self.shadows = style.sun_strength > 0.05

    # visibility -------------------------------------------------------------------------------

    def visible(self, x: float, y: float, radius: float) -> bool:
        """Cheap frustum test of a vertical cylinder around (x, y)."""
        dx, dy = x - self.eye[0], y - self.eye[1]
        along = dx * self.fwd[0] + dy * self.fwd[1]
        if along < -radius or along > 420.0:
            return False
        side = abs(-dx * self.fwd[1] + dy * self.fwd[0])
        return side <= max(along, 0.0) * self.tan_h * 1.15 + radius

    def dist(self, x: float, y: float) -> float:
        """Horizontal distance from the camera to (x, y)."""
        return math.hypot(x - self.eye[0], y - self.eye[1])

    def facing(self, x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
        """Horizontal unit vectors towards the camera and to the camera's right at (x, y)."""
        direction = np.array([x - self.eye[0], y - self.eye[1], 0.0])
        direction = (
            _unit(direction)
            if np.hypot(direction[0], direction[1]) > 1e-6
            else np.array([*self.fwd, 0.0])
        )
        return -direction, np.array([direction[1], -direction[0], 0.0])

    # primitives -------------------------------------------------------------------------------

    def box(
        self,
        corners: np.ndarray,
        z0: float,
        z1: float,
        label: int,
        mat: int,
        col: Color,
        *,
        top: bool = True,
        face_mat: FaceMat | None = None,
        **kw: Any,
    ) -> None:
        """Vertical prism over a counter-clockwise footprint; ``face_mat`` overrides per edge."""
        mesh = self.mesh
        count = len(corners)
        for i in range(count):
            start, end = corners[i], corners[(i + 1) % count]
            es = np.array([end[0] - start[0], end[1] - start[1], 0.0])
            length = float(np.hypot(es[0], es[1]))
            if length < 1e-6:
                continue
            es /= length
            normal = np.array([es[1], -es[0], 0.0])
            if float(np.dot(normal[:2], self.eye[:2] - start)) <= 0.0:
                continue
            quad = [
                [start[0], start[1], z0],
                [end[0], end[1], z0],
                [end[0], end[1], z1],
                [start[0], start[1], z1],
            ]
            override = face_mat(i, length) if face_mat else None
            if override is None:
                mesh.add(
                    quad,
                    label,
                    mat,
                    col,
                    normal=normal,
                    es=es,
                    et=UP,
                    origin=np.array([start[0], start[1], z0]),
                    cull=False,
                    **kw,
                )
            elif override:
                face_material, face_col, face_kw = override
                mesh.add(
                    quad,
                    label,
                    face_material,
                    face_col,
                    normal=normal,
                    es=es,
                    et=UP,
                    origin=np.array([start[0], start[1], z0]),
                    cull=False,
                    **face_kw,
                )
        if top and z1 < self.eye[2]:
            mesh.add(_lift(corners, z1), label, mat, col, normal=UP, **kw)

    def cylinder(
        self,
        x: float,
        y: float,
        z0: float,
        z1: float,
        radius: float,
        label: int,
        mat: int,
        col: Color,
    ) -> None:
        """A vertical cylinder as a camera-facing quad, shaded round by the material."""
        to_cam, right = self.facing(x, y)
        base = np.array([x, y, 0.0])
        left_pt, right_pt = base - radius * right, base + radius * right
        quad = [
            [left_pt[0], left_pt[1], z0],
            [right_pt[0], right_pt[1], z0],
            [right_pt[0], right_pt[1], z1],
            [left_pt[0], left_pt[1], z1],
        ]
        sun_light = float(self.sun @ to_cam), float(self.sun @ right)
        self.mesh.add(
            quad,
            label,
            mat,
            col,
            normal=to_cam,
            es=right,
            et=UP,
            origin=np.array([left_pt[0], left_pt[1], z0]),
            params=(radius, *sun_light),
            cull=False,
        )
        if self.shadows and z1 - z0 > 1.5:
            self._shadow_segment(x, y, z1, max(radius, 0.05))

    def limb(
        self,
        start: np.ndarray,
        end: np.ndarray,
        w0: float,
        w1: float,
        label: int,
        col: Color,
        mat: int = M_FLAT,
    ) -> None:
        """A segment between two 3D points drawn as a camera-facing (tapered) quad."""
        start, end = start.tolist(), end.tolist()  # Python floats, as in Mesh.add
        eye = self.mesh.eye
        axis = (end[0] - start[0], end[1] - start[1], end[2] - start[2])
        view = (
            (start[0] + end[0]) / 2 - eye[0],
            (start[1] + end[1]) / 2 - eye[1],
            (start[2] + end[2]) / 2 - eye[2],
        )
        side = _cross3(axis, view)
        side_len = math.sqrt(side[0] ** 2 + side[1] ** 2 + side[2] ** 2)
        if side_len < 1e-9:
            return
        side_x, side_y, side_z = side[0] / side_len, side[1] / side_len, side[2] / side_len
        half0, half1 = w0 / 2, w1 / 2
        quad = [
            (start[0] - side_x * half0, start[1] - side_y * half0, start[2] - side_z * half0),
            (start[0] + side_x * half0, start[1] + side_y * half0, start[2] + side_z * half0),
            (end[0] + side_x * half1, end[1] + side_y * half1, end[2] + side_z * half1),
            (end[0] - side_x * half1, end[1] - side_y * half1, end[2] - side_z * half1),
        ]
        # The quad's normal is side x axis (or its opposite); make it face the camera.
        normal = _unit3(_cross3(side, axis))
        if normal[0] * view[0] + normal[1] * view[1] + normal[2] * view[2] > 0:
            normal = (-normal[0], -normal[1], -normal[2])
            quad = quad[::-1]
        self.mesh.add(quad, label, mat, col, normal=normal, cull=False)

    def disc(
        self,
        centre: np.ndarray,
        e1: np.ndarray,
        e2: np.ndarray,
        radius: float,
        label: int,
        mat: int,
        col: Color,
        *,
        n: int = 12,
        params: tuple[float, ...] = (),
        cull: bool = True,
        inner: float = 0.0,
        **kw: Any,
    ) -> None:
        """A regular n-gon in the plane spanned by e1, e2 (normal e1 x e2); a ring if inner."""
        cos_col, sin_col = _circle(n)
        ring = cos_col * e1 + sin_col * e2
        outline = centre + radius * ring
        hole = centre + inner * ring if inner > 0 else None
        self.mesh.add(
            outline,
            label,
            mat,
            col,
            normal=_cross3(e1, e2),
            es=e1,
            et=e2,
            origin=centre,
            params=params,
            cull=cull,
            hole=hole,
            **kw,
        )

    # shadows ----------------------------------------------------------------------------------

    def _project_down(self, pts: np.ndarray) -> np.ndarray:
        """Drop 3D points along the sun direction onto the ground plane z = 0."""
        drop = pts[:, 2:3] / max(self.sun[2], 0.25)
        return pts[:, :2] - drop * self.sun[:2]

    def shadow_box(self, corners: np.ndarray, z1: float) -> None:
        """Cast shadow of a prism up to height z1: the hull of its footprint and dropped top."""
        if not self.shadows:
            return
        top = self._project_down(_lift(corners, z1))
        hull = cv2.convexHull(np.vstack([corners, top]).astype(np.float32))[:, 0, :]
        self.mesh.shadows.append(hull.astype(np.float64))

    def _shadow_segment(self, x: float, y: float, z1: float, half_width: float) -> None:
        """Cast shadow of a vertical pole at (x, y) up to height z1."""
        tip = self._project_down(np.array([[x, y, z1]]))[0]
        direction = _unit(np.array([tip[0] - x, tip[1] - y]))
        offset = np.array([-direction[1], direction[0]]) * half_width
        base = np.array([x, y])
        self.mesh.shadows.append(
            np.array([base - offset, tip - offset, tip + offset, base + offset])
        )

    def shadow_blob(self, x: float, y: float, z: float, radius: float) -> None:
        """Cast shadow of a ball at (x, y, z): an ellipse stretched away from the sun."""
        if not self.shadows:
            return
        centre = self._project_down(np.array([[x, y, z]]))[0]
        cos_col, sin_col = _circle(10)
        sun_dir = self.sun[:2] / max(float(np.hypot(*self.sun[:2])), 1e-6)
        stretch = 1.0 / max(self.sun[2], 0.3)
        pts = cos_col * (sun_dir * radius * stretch) + sin_col * (
            np.array([sun_dir[1], -sun_dir[0]]) * radius
        )
        self.mesh.shadows.append(centre + pts)

    # objects ----------------------------------------------------------------------------------

    def building(self, building: Building) -> None:
        corners = building.corners
        cx, cy = corners.mean(axis=0)
        radius = float(np.max(np.hypot(corners[:, 0] - cx, corners[:, 1] - cy)))
        if not self.visible(cx, cy, radius):
            return
        facade = building.facade
        height = building.height

        def face(i: int, length: float) -> tuple[int, Color, dict[str, Any]]:
            params = (
                facade.storey,
                facade.ground_floor,
                facade.win_w,
                facade.win_h,
                facade.spacing,
                facade.sill,
                float(facade.shop),
                facade.band,
                facade.offset,
                float(facade.texture),
                height,
                length,
                float(i),
            )
            return (
                M_FACADE,
                facade.color,
                dict(col2=facade.window_color, col3=facade.frame_color, params=params),
            )

        self.box(
            corners,
            0.0,
            height,
            BUILDING,
            M_FACADE,
            facade.color,
            top=building.roof_height <= 0,
            face_mat=face,
        )
        if building.roof_height > 0:
            eaves = _lift(corners, height)
            ridge0 = (eaves[0] + eaves[3]) / 2 + [0, 0, building.roof_height]
            ridge1 = (eaves[1] + eaves[2]) / 2 + [0, 0, building.roof_height]
            mesh = self.mesh
            roof_params = (0.3,)
            mesh.add(
                [eaves[0], eaves[1], ridge1, ridge0],
                BUILDING,
                M_ROOF,
                building.roof_color,
                params=roof_params,
            )
            mesh.add(
                [eaves[2], eaves[3], ridge0, ridge1],
                BUILDING,
                M_ROOF,
                building.roof_color,
                params=roof_params,
            )
            gable_kw = face(1, 1.0)[2]
            mesh.add(
                [eaves[1], eaves[2], ridge1],
                BUILDING,
                M_FACADE,
                facade.color,
                es=_unit(eaves[2] - eaves[1]),
                et=UP,
                origin=np.array([*corners[1], 0.0]),
                col2=facade.window_color,
                col3=facade.frame_color,
                params=gable_kw['params'],
            )
            mesh.add(
                [eaves[3], eaves[0], ridge0],
                BUILDING,
                M_FACADE,
                facade.color,
                es=_unit(eaves[0] - eaves[3]),
                et=UP,
                origin=np.array([*corners[3], 0.0]),
                col2=facade.window_color,
                col3=facade.frame_color,
                params=gable_kw['params'],
            )
        self.shadow_box(corners, height + 0.5 * building.roof_height)

    def block(self, blk: Block) -> None:
        corners = blk.corners
        cx, cy = corners.mean(axis=0)
        radius = float(np.max(np.hypot(corners[:, 0] - cx, corners[:, 1] - cy)))
        if not self.visible(cx, cy, radius):
            return
        mat = {
            'wall': M_WALL,
            'hedge': M_HEDGE,
            'fence': M_FENCE,
            'guardrail': M_FLAT,
            'static': M_FLAT,
            'concrete': M_WALL,
        }[blk.kind]
        # Fence style (bars, planks, mesh) follows from its colour: no extra scene state.
        style = float(int(blk.color[0] * 1000) % 3) if blk.kind == 'fence' else 0.0
        params = (blk.z1 - blk.z0, style)
        self.box(corners, blk.z0, blk.z1, blk.label, mat, blk.color, params=params)
        if blk.kind in ('wall', 'hedge', 'static'):
            self.shadow_box(corners, blk.z1)

    def pole(self, pole: Pole) -> None:
        if not self.visible(pole.x, pole.y, pole.radius + 1):
            return
        if self.dist(pole.x, pole.y) > 250:
            return
        self.cylinder(
            pole.x,
            pole.y,
            pole.z0,
            pole.z0 + pole.height,
            pole.radius,
            pole.label,
            M_METAL,
            pole.color,
        )
        if pole.radius > 0.3:  # advertising column: a cap on top
            self.cylinder(
                pole.x,
                pole.y,
                pole.z0 + pole.height,
                pole.z0 + pole.height + 0.25,
                pole.radius * 1.12,
                pole.label,
                M_METAL,
                (0.25, 0.3, 0.27),
            )

    def street_light(self, light: StreetLight) -> None:
        if not self.visible(light.x, light.y, light.arm_length + 1):
            return
        top = light.z0 + light.height
        self.cylinder(light.x, light.y, light.z0, top, 0.09, POLE, M_METAL, light.color)
        arm_dir = np.array([math.cos(light.arm_yaw), math.sin(light.arm_yaw), 0.0])
        arm_start = np.array([light.x, light.y, top - 0.3])
        arm_end = arm_start + arm_dir * light.arm_length + [0, 0, 0.3]
        self.limb(arm_start, arm_end, 0.08, 0.07, POLE, light.color)
        head = arm_end + arm_dir * 0.25 - [0, 0, 0.12]
        head_footprint = _footprint(head[0], head[1], 0.6, 0.28, light.arm_yaw)
        self.box(head_footprint, head[2], head[2] + 0.14, POLE, M_FLAT, (0.3, 0.31, 0.32))

    def traffic_light(self, light: TrafficLight) -> None:
        if not self.visible(light.x, light.y, light.arm_length + 1):
            return
        top = light.z0 + light.pole_height
        self.cylinder(light.x, light.y, light.z0, top, 0.07, POLE, M_METAL, (0.35, 0.37, 0.36))
        facing_dir = np.array([math.cos(light.facing), math.sin(light.facing), 0.0])
        if light.arm_length > 0:
            # Mast arm towards the road centre (+y on the right side), box hanging at its end.
            arm_start = np.array([light.x, light.y, top - 0.2])
            arm_end = arm_start + np.array([0.0, light.arm_length, 0.0])
            self.limb(arm_start, arm_end, 0.12, 0.1, POLE, (0.35, 0.37, 0.36))
            centre = arm_end + facing_dir * 0.2 - [0, 0, 1.1]
        else:
            centre = np.array([light.x, light.y, light.z0 + light.box_z]) + facing_dir * 0.2
        box_w, box_h = (0.3, 0.65) if light.pedestrian else (0.32, 0.95)
        box_footprint = _footprint(centre[0], centre[1], 0.25, box_w, light.facing)

        def face(i: int, length: float) -> tuple[int, Color, dict[str, Any]] | None:
            if i == 1:  # edge 1 of a footprint faces its yaw
                return (
                    M_TLIGHT,
                    (0.08, 0.08, 0.08),
                    dict(
                        params=(box_w, box_h, float(light.state), 2.0 if light.pedestrian else 3.0)
                    ),
                )
            return None

        self.box(
            box_footprint,
            centre[2],
            centre[2] + box_h,
            TRAFFIC_LIGHT,
            M_FLAT,
            (0.12, 0.12, 0.11),
            face_mat=face,
        )

    def sign(self, sign: Sign) -> None:
        if not self.visible(sign.x, sign.y, 1.0) or self.dist(sign.x, sign.y) > 200:
            return
        top = sign.z0 + sign.pole_height
        self.cylinder(sign.x, sign.y, sign.z0, top, 0.035, POLE, M_METAL, (0.5, 0.52, 0.53))
        front_dir = np.array([math.cos(sign.facing), math.sin(sign.facing), 0.0])
        right = np.array([-front_dir[1], front_dir[0], 0.0])
        for plate in sign.plates:
            plate_centre = np.array([sign.x, sign.y, sign.z0 + plate.z]) + front_dir * 0.06
            radius = plate.size / 2
            shape, n_verts, rotation, half_w, half_h = _SHAPES[plate.shape]
            ang = rotation + np.linspace(0, 2 * np.pi, n_verts, endpoint=False)
            along_right, along_up = np.cos(ang) * radius, np.sin(ang) * radius
            if plate.shape == 'rect':
                along_right = np.array([-1, 1, 1, -1]) * radius * half_w
                along_up = np.array([-1, -1, 1, 1]) * radius * half_h
            outline = plate_centre + along_right[:, None] * right + along_up[:, None] * UP
            front = float(np.dot(front_dir, self.eye - plate_centre)) > 0
            if front:
                self.mesh.add(
                    outline,
                    TRAFFIC_SIGN,
                    M_SIGN,
                    plate.face,
                    normal=front_dir,
                    es=right,
                    et=UP,
                    origin=plate_centre,
                    col2=plate.border,
                    params=(shape, radius, half_w, half_h),
                    cull=False,
                )
            else:  # the back of a sign is 'static' in Cityscapes
                self.mesh.add(
                    outline[::-1], STATIC, M_FLAT, (0.5, 0.51, 0.52), normal=-front_dir, cull=False
                )

    def tree(self, tree: Tree) -> None:
        reach = max(crown.radius for crown in tree.crowns) + 2
        if not self.visible(tree.x, tree.y, reach):
            return
        far = self.dist(tree.x, tree.y) > 200
        self.cylinder(
            tree.x,
            tree.y,
            tree.z0,
            tree.z0 + tree.trunk_height,
            tree.trunk_radius,
            VEGETATION,
            M_BARK,
            tree.trunk_color,
        )
        for crown in tree.crowns:
            cx, cy, cz = tree.x + crown.dx, tree.y + crown.dy, tree.z0 + crown.z
            to_cam, right = self.facing(cx, cy)
            px, pz = _crown_outline(crown.seed, 10 if far else 22)
            px, pz = px * crown.radius, pz * crown.radius
            centre = np.array([cx, cy, cz])
            outline = centre + px[:, None] * right + pz[:, None] * UP
            crown_params = (
                crown.radius,
                float(self.sun @ to_cam),
                float(self.sun @ right),
                float(self.sun[2]),
                float(crown.seed % 997),
            )
            self.mesh.add(
                outline,
                VEGETATION,
                M_FOLIAGE,
                tree.color,
                normal=to_cam,
                es=right,
                et=UP,
                origin=centre,
                params=crown_params,
                cull=False,
            )
            self.shadow_blob(cx, cy, cz, crown.radius * 0.9)

    # road users -------------------------------------------------------------------------------

    def vehicle(self, vehicle: Vehicle) -> None:
        x, y, yaw = vehicle.pose(self.t)
        if not self.visible(x, y, vehicle.length / 2 + 1):
            return
        length, width, height = vehicle.length, vehicle.width, vehicle.height
        cos_yaw, sin_yaw = math.cos(yaw), math.sin(yaw)
        fwd = np.array([cos_yaw, sin_yaw, 0.0])
        lat = np.array([-sin_yaw, cos_yaw, 0.0])
        centre = np.array([x, y, 0.0])
        dist = self.dist(x, y)
        label = vehicle.label

        def footprint(
            x0: float, x1: float, span_w: float
        ) -> np.ndarray:  # footprint in the vehicle frame, x along the heading
            pts = np.array(
                [[x0, -span_w / 2], [x1, -span_w / 2], [x1, span_w / 2], [x0, span_w / 2]]
            )
            return pts[:, :1] * fwd[:2] + pts[:, 1:] * lat[:2] + centre[:2]

        glass = (0.09, 0.1, 0.12)
        if vehicle.kind in ('car', 'van'):
            clear, r_wheel = 0.3, 0.32 if vehicle.kind == 'car' else 0.35
            belt = 0.84 if vehicle.kind == 'car' else height * 0.5
            self.box(
                footprint(-length / 2, length / 2, width),
                clear,
                belt,
                label,
                M_PAINT,
                vehicle.color,
                params=(belt - clear,),
            )
            if vehicle.kind == 'car':
                base0, base1, roof0, roof1 = (
                    -0.34 * length,
                    0.2 * length,
                    -0.28 * length,
                    0.03 * length,
                )
            else:
                base0, base1, roof0, roof1 = (
                    -0.5 * length,
                    0.34 * length,
                    -0.5 * length,
                    0.24 * length,
                )
            cabin_base = _lift(footprint(base0, base1, width * 0.96), belt)
            cabin_top = _lift(
                footprint(roof0, roof1, width * (0.8 if vehicle.kind == 'car' else 0.92)), height
            )
            self._hexa(cabin_base, cabin_top, label, vehicle, glass)
            self._wheels(
                vehicle,
                fwd,
                lat,
                centre,
                length * 0.5 - 0.8 * r_wheel / 0.32,
                width,
                r_wheel,
                dist,
            )
            self.mesh.contact.append(
                footprint(-length / 2 - 0.15, length / 2 + 0.15, width + 0.25)
            )
            self.shadow_box(footprint(-length / 2, length / 2, width), height * 0.85)
        else:
            clear = 0.15 if vehicle.kind == 'tram' else 0.35
            r_wheel = 0.5
            if vehicle.kind == 'truck':
                cab = 2.1
                cab_h = min(height - 0.2, 2.9)
                self.box(
                    footprint(length / 2 - cab, length / 2, width),
                    clear + 0.3,
                    cab_h,
                    label,
                    M_BODY,
                    vehicle.accent,
                    face_mat=self._bus_faces(vehicle, cab_h - clear - 0.3, cab=True),
                )
                self.box(
                    footprint(-length / 2, length / 2 - cab - 0.15, width),
                    clear + 0.5,
                    height,
                    label,
                    M_PAINT,
                    vehicle.color,
                    face_mat=self._plain_rear(vehicle),
                )
                self.box(
                    footprint(-length / 2 + 0.3, length / 2 - 0.2, width * 0.9),
                    clear,
                    clear + 0.5,
                    label,
                    M_FLAT,
                    (0.12, 0.12, 0.13),
                    top=False,
                )
            else:
                self.box(
                    footprint(-length / 2, length / 2, width),
                    clear,
                    height,
                    label,
                    M_BODY,
                    vehicle.color,
                    face_mat=self._bus_faces(vehicle, height - clear),
                )
            if vehicle.kind != 'tram':
                self._wheels(vehicle, fwd, lat, centre, length * 0.5 - 2.2, width, r_wheel, dist)
            self.mesh.contact.append(footprint(-length / 2 - 0.2, length / 2 + 0.2, width + 0.3))
            self.shadow_box(footprint(-length / 2, length / 2, width), height)

    def _bus_faces(self, vehicle: Vehicle, height: float, cab: bool = False) -> FaceMat:
        def faces(i: int, length: float) -> tuple[int, Color, dict[str, Any]] | None:
            if i in (0, 2):  # sides: a band of windows with pillars
                if cab:
                    return (
                        M_BODY,
                        vehicle.accent,
                        dict(
                            col2=(0.1, 0.11, 0.13),
                            params=(height * 0.45, height * 0.9, 9.0, 0.0, 0.3, 1.0, length),
                        ),
                    )
                period = 1.6 if vehicle.kind == 'tram' else 1.35
                return (
                    M_BODY,
                    vehicle.color,
                    dict(
                        col2=(0.09, 0.1, 0.12),
                        params=(height * 0.32, height * 0.84, period, 0.14, 0.4, 0.4, length),
                    ),
                )
            if i == 1 or (i == 3 and vehicle.kind == 'tram'):  # windscreen
                return (
                    M_BODY,
                    vehicle.color if not cab else vehicle.accent,
                    dict(
                        col2=(0.1, 0.11, 0.13),
                        params=(height * 0.35, height * 0.92, 9.0, 0.0, 0.12, 0.12, length),
                    ),
                )
            return (
                M_BODY,
                vehicle.color,
                dict(
                    col2=(0.1, 0.11, 0.13),
                    params=(height * 0.55, height * 0.9, 9.0, 0.0, 0.3, 0.3, length),
                ),
            )

        return faces

    def _plain_rear(self, vehicle: Vehicle) -> FaceMat:
        def faces(i: int, length: float) -> tuple[int, Color, dict[str, Any]] | None:
            if i == 3:
                return M_PAINT, vehicle.color, dict(params=(0.0, -1.0))
            return None

        return faces

    def _hexa(
        self, base: np.ndarray, top: np.ndarray, label: int, vehicle: Vehicle, glass: Color
    ) -> None:
        """Car cabin: a hexahedron with glass sides and a painted roof."""
        mesh = self.mesh
        for i in range(4):
            j = (i + 1) % 4
            quad = np.array([base[i], base[j], top[j], top[i]])
            height = float(top[i, 2] - base[i, 2])
            et = _unit(top[i] - base[i])
            if vehicle.kind == 'van' and i != 1:  # painted van body with a band of windows
                length = float(np.linalg.norm(base[j] - base[i]))
                params = (
                    (0.1 * height, 0.75 * height, 1.7, 0.12, 0.25, 0.25, length)
                    if i != 3
                    else (0.2 * height, 0.75 * height, 9.0, 0.0, 0.2, 0.2, length)
                )
                mesh.add(quad, label, M_BODY, vehicle.color, col2=glass, params=params, et=et)
            else:
                mesh.add(quad, label, M_GLASS, glass, params=(height,), et=et)
        if top[0, 2] < self.eye[2]:
            mesh.add(top, label, M_PAINT, vehicle.color, normal=UP.copy(), params=(0.0, -1.0))

    def _wheels(
        self,
        vehicle: Vehicle,
        fwd: np.ndarray,
        lat: np.ndarray,
        centre: np.ndarray,
        half_base: float,
        width: float,
        radius: float,
        dist: float,
    ) -> None:
        """Wheel caps on both sides of two axles ``half_base`` ahead of and behind ``centre``."""
        yaw = math.atan2(fwd[1], fwd[0])
        for axle_x in (-half_base, half_base):
            axle = centre + fwd * axle_x
            for side in (-1, 1):
                hub = axle + lat * side * (width / 2 - 0.12) + [0, 0, radius]
                # Outer cap (only the side facing the camera survives culling).
                self.disc(
                    hub + lat * side * 0.13,
                    -fwd * side,
                    UP,
                    radius,
                    vehicle.label,
                    M_TIRE,
                    (0.05, 0.05, 0.055),
                    n=12 if dist < 40 else 8,
                    params=(radius,),
                )
            if dist < 60:
                # Both tyres of an axle and the dark gap between them, seen from front/behind.
                axle_footprint = _footprint(axle[0], axle[1], 1.5 * radius, width - 0.25, yaw)
                self.box(
                    axle_footprint,
                    0.0,
                    1.8 * radius,
                    vehicle.label,
                    M_TIRE,
                    (0.05, 0.05, 0.055),
                    top=False,
                    params=(0.0,),
                )

    def decals(self, vehicle: Vehicle) -> None:
        """Lights and number plates in front of car/van front and rear faces."""
        x, y, yaw = vehicle.pose(self.t)
        if vehicle.kind not in ('car', 'van') or not self.visible(x, y, vehicle.length):
            return
        if self.dist(x, y) > 80:
            return
        cos_yaw, sin_yaw = math.cos(yaw), math.sin(yaw)
        fwd = np.array([cos_yaw, sin_yaw, 0.0])
        centre = np.array([x, y, 0.0])
        width, length = vehicle.width, vehicle.length
        for sign in (1, -1):  # front, rear
            face_normal = fwd * sign
            base = centre + face_normal * (length / 2 + 0.012)
            if float(np.dot(face_normal, self.eye - base)) <= 0:
                continue
            right = np.array(_cross3(face_normal, UP))  # viewer's right when looking at the face
            lamp = (0.85, 0.85, 0.8) if sign > 0 else (0.55, 0.05, 0.05)
            for side in (-1, 1):
                lamp_x = side * (width / 2 - 0.22)
                self._rect_decal(base, right, lamp_x, 0.68, 0.34, 0.14, lamp, vehicle.label)
            self._rect_decal(base, right, 0.0, 0.42, 0.52, 0.12, (0.85, 0.85, 0.82), vehicle.label)

    def _rect_decal(
        self,
        base: np.ndarray,
        right: np.ndarray,
        offset_right: float,
        offset_up: float,
        width: float,
        height: float,
        col: Color,
        label: int,
    ) -> None:
        """A ``width`` x ``height`` rectangle on a vertical face (lamp, number plate)."""
        centre = base + right * offset_right + UP * offset_up
        quad = [
            centre - right * width / 2 - UP * height / 2,
            centre + right * width / 2 - UP * height / 2,
            centre + right * width / 2 + UP * height / 2,
            centre - right * width / 2 + UP * height / 2,
        ]
        self.mesh.add(quad, label, M_FLAT, col, cull=False)

    def person(
        self,
        person: Person,
        base: np.ndarray | None = None,
        yaw: float | None = None,
        riding: str | None = None,
    ) -> None:
        """Articulated pedestrian (or a rider seated at ``base`` = hip position)."""
        if base is None:
            x, y, yaw = person.pose(self.t)
            if not self.visible(x, y, 1.0) or self.dist(x, y) > 150:
                return
            foot = np.array([x, y, person.z0])
        height = person.height
        heading = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        lat = np.array([-heading[1], heading[0], 0.0])
        label = person.label
        to_cam, right = self.facing(*(foot[:2] if base is None else base[:2]))
        # Apparent torso width: broad from the front, narrow from the side.
        torso_w = person.width * abs(float(lat @ right)) + 0.26 * height / 1.75 * abs(
            float(heading @ right)
        )
        if riding is None:
            hip = foot + [0, 0, 0.52 * height]
            gait_phase = person.gait(self.t)
            swing = 0.38 * math.sin(gait_phase) if person.speed > 0 else 0.0
            lean = 0.0
        else:
            hip = base
            swing = 0.0
            lean = 0.35 if riding == 'bicycle' else 0.2
        shoulder = hip + (heading * math.sin(lean) + UP * math.cos(lean)) * 0.3 * height
        neck = hip + (heading * math.sin(lean) + UP * math.cos(lean)) * 0.36 * height
        head = neck + UP * 0.075 * height + heading * 0.02
        leg_w = 0.075 * height / 0.86 * 0.75
        hips = [hip + lat * k * 0.09 * height / 1.75 for k in (-1, 1)]
        for k, hip_k in enumerate(hips):
            if riding is None:
                angle = swing if k == 0 else -swing
                knee = hip_k + (heading * math.sin(angle) - UP * math.cos(angle)) * 0.25 * height
                foot_k = (
                    knee
                    + (heading * math.sin(angle - 0.25 * abs(angle)) - UP * math.cos(angle))
                    * 0.25
                    * height
                )
            else:
                pedal = 0.5 * math.sin(person.phase + k * math.pi)
                knee = hip_k + heading * 0.26 * height + UP * (0.02 + 0.05 * pedal) * height
                foot_k = hip_k + heading * (0.12 * height) - UP * (0.3 + 0.05 * pedal) * height
            self.limb(hip_k, knee, leg_w * 1.25, leg_w, label, person.pants)
            self.limb(knee, foot_k, leg_w, leg_w * 0.8, label, person.pants)
            toe = foot_k + heading * 0.12 - UP * 0.02
            self.limb(foot_k, toe, 0.09, 0.07, label, (0.08, 0.07, 0.07))
        # Torso: a trapezoid from the (narrower) hips to the shoulders, then a neck.
        self.limb(hip - UP * 0.04 * height, shoulder, torso_w * 0.72, torso_w, label, person.shirt)
        self.limb(
            shoulder - UP * 0.01 * height, neck, 0.05 * height, 0.04 * height, label, person.skin
        )
        for k in (-1, 1):
            shoulder_k = shoulder + lat * k * 0.2 * height / 1.75
            angle = -swing * k * 0.8
            if riding is None:
                elbow = (
                    shoulder_k + (heading * math.sin(angle) - UP * math.cos(angle)) * 0.17 * height
                )
                hand = (
                    elbow
                    + (heading * math.sin(angle + 0.2) - UP * math.cos(angle + 0.2))
                    * 0.16
                    * height
                )
            else:
                elbow = shoulder_k + heading * 0.16 * height - UP * 0.08 * height
                hand = elbow + heading * 0.17 * height - UP * 0.02 * height
            self.limb(shoulder_k, elbow, 0.055 * height, 0.048 * height, label, person.shirt)
            self.limb(elbow, hand, 0.048 * height, 0.04 * height, label, person.skin)
        # Head: skin ellipse and a hair cap slightly in front of its top half.
        self.disc(head, right, UP, 0.068 * height, label, M_FLAT, person.skin, n=10, cull=False)
        hair_centre = head + to_cam * 0.012 + UP * 0.03 * height
        arc = np.linspace(0, np.pi, 7)
        hair_r = 0.07 * height
        hair = hair_centre + (
            np.cos(arc)[:, None] * right * hair_r + np.sin(arc)[:, None] * UP * hair_r * 0.7
        )
        hair = np.vstack([hair, hair_centre - right * hair_r * 0.9 - UP * 0.01])
        self.mesh.add(hair, label, M_FLAT, person.hair, normal=to_cam, cull=False)
        if riding is None:
            self.shadow_blob(foot[0], foot[1], 0.9, 0.25)

    def two_wheeler(self, tw: TwoWheeler) -> None:
        x, y, yaw = tw.pose(self.t)
        if not self.visible(x, y, 1.5) or self.dist(x, y) > 150:
            return
        label = tw.label
        heading = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        lat = np.array([-heading[1], heading[0], 0.0])
        base = np.array([x, y, tw.z0])
        to_cam, right = self.facing(x, y)
        edge_on = abs(float(heading @ right)) < 0.35  # seen (almost) from behind or in front
        if tw.kind == 'bicycle':
            wheel_r, half_base = 0.34, 0.52
            rear, front = (
                base + heading * -half_base + UP * wheel_r,
                base + heading * half_base + UP * wheel_r,
            )
            crank = base + UP * 0.3
            seat = base - heading * 0.2 + UP * 0.9
            head = base + heading * 0.38 + UP * 0.95
            tube = (0.12, 0.12, 0.12) if tw.color[0] < 0.2 else tw.color
            for start, end in (
                (rear, crank),
                (crank, seat),
                (seat, rear),
                (crank, head),
                (seat, head),
                (head, front),
            ):
                self.limb(start, end, 0.035, 0.035, label, tube)
            self.limb(
                head - lat * 0.28,
                head + lat * 0.28 + UP * 0.02,
                0.03,
                0.03,
                label,
                (0.1, 0.1, 0.1),
            )
            for wheel in (rear, front):
                if edge_on:
                    self.limb(
                        wheel - UP * wheel_r,
                        wheel + UP * wheel_r,
                        0.045,
                        0.045,
                        label,
                        (0.06, 0.06, 0.06),
                    )
                else:
                    self.disc(
                        wheel,
                        heading,
                        UP,
                        wheel_r,
                        label,
                        M_FLAT,
                        (0.06, 0.06, 0.06),
                        n=14,
                        cull=False,
                        inner=wheel_r - 0.05,
                    )
            hip = seat + UP * 0.05
        else:
            wheel_r, half_base = 0.31, 0.7
            rear, front = (
                base + heading * -half_base + UP * wheel_r,
                base + heading * half_base + UP * wheel_r,
            )
            for wheel in (rear, front):
                self.disc(
                    wheel,
                    heading,
                    UP,
                    wheel_r,
                    label,
                    M_TIRE,
                    (0.05, 0.05, 0.05),
                    n=12,
                    cull=False,
                    params=(wheel_r,),
                )
                tyre_footprint = _footprint(wheel[0], wheel[1], 1.6 * wheel_r, 0.14, yaw)
                self.box(
                    tyre_footprint,
                    tw.z0,
                    tw.z0 + 2 * wheel_r,
                    label,
                    M_TIRE,
                    (0.05, 0.05, 0.05),
                    top=False,
                    params=(0.0,),
                )
            body = _footprint(x, y, 1.1, 0.42, yaw)
            self.box(
                body, tw.z0 + 0.35, tw.z0 + 0.85, label, M_PAINT, tw.color, params=(0.0, -1.0)
            )
            head = base + heading * 0.55 + UP * 1.0
            self.limb(
                base + heading * 0.5 + UP * 0.85, head, 0.07, 0.06, label, (0.15, 0.15, 0.15)
            )
            self.limb(head - lat * 0.35, head + lat * 0.35, 0.04, 0.04, label, (0.1, 0.1, 0.1))
            hip = base - heading * 0.15 + UP * 0.9
        if tw.rider is not None:
            self.person(tw.rider, base=hip, yaw=yaw, riding=tw.kind)
        self.shadow_blob(x, y, 0.6, 0.5)


_SHAPES = {  # code, polygon vertices, rotation, rect half-width / half-height factors
    'circle': (0.0, 18, 0.0, 1.0, 1.0),
    'triangle': (1.0, 3, math.pi / 2, 1.0, 1.0),
    'rect': (2.0, 4, 0.0, 1.0, 0.72),
    'diamond': (3.0, 4, 0.0, 1.0, 1.0),
    'octagon': (4.0, 8, math.pi / 8, 1.0, 1.0),
}


def _lift(xy: np.ndarray, z: float) -> np.ndarray:
    """(n, 2) ground points -> (n, 3) at height z."""
    out = np.empty((len(xy), 3))
    out[:, :2] = xy
    out[:, 2] = z
    return out


@functools.lru_cache(maxsize=64)
def _circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    """cos / sin of n angles around the circle as (n, 1) columns (for broadcasting)."""
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.cos(ang)[:, None], np.sin(ang)[:, None]


@functools.lru_cache(maxsize=4)
def _crown_outlines(n: int) -> tuple[np.ndarray, np.ndarray]:
    """64 irregular unit blob outlines for tree crowns: circles with random low harmonics."""
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rng = np.random.default_rng(1234)
    wobble = np.ones((64, n))
    for k in range(2, 8):
        amp = rng.uniform(0.03, 0.12, (64, 1)) / math.sqrt(k - 1)
        wobble += amp * np.cos(k * angles + rng.uniform(0, 7, (64, 1)))
    return np.cos(angles) * wobble, np.sin(angles) * wobble * 0.88


def _crown_outline(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One of the 64 crown outlines (x right, z up) with n vertices, chosen by ``seed``."""
    px, pz = _crown_outlines(n)
    return px[seed % 64], pz[seed % 64]


def _footprint(cx: float, cy: float, length: float, width: float, yaw: float) -> np.ndarray:
    """Oriented rectangle (4, 2) centred at (cx, cy), ``length`` along ``yaw``."""
    cos_yaw, sin_yaw = math.cos(yaw), math.sin(yaw)
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * [length / 2, width / 2]
    return half @ np.array([[cos_yaw, sin_yaw], [-sin_yaw, cos_yaw]]) + [cx, cy]


def emit_scene(scene: Scene, t: float, eye: np.ndarray, yaw: float, tan_h: float) -> Mesh:
    """Every object of ``scene`` at time ``t`` near the view of a camera at ``eye``."""
    mesh = Mesh(eye)
    emitter = Emitter(scene, t, eye, yaw, tan_h, mesh)
    for building in scene.buildings:
        emitter.building(building)
    for block in scene.blocks:
        emitter.block(block)
    for pole in scene.poles:
        emitter.pole(pole)
    for light in scene.lights:
        emitter.street_light(light)
    for traffic_light in scene.traffic_lights:
        emitter.traffic_light(traffic_light)
    for sign in scene.signs:
        emitter.sign(sign)
    for tree in scene.trees:
        emitter.tree(tree)
    for vehicle in scene.vehicles:
        emitter.vehicle(vehicle)
        emitter.decals(vehicle)
    for two_wheeler in scene.two_wheelers:
        emitter.two_wheeler(two_wheeler)
    for person in scene.persons:
        emitter.person(person)
    return mesh


def emit_ground(scene: Scene, eye: np.ndarray) -> Mesh:
    """The road layout's ground polygons (and curb faces), in their back-to-front order."""
    ground = Mesh(eye)
    for poly in scene.road.ground:
        if poly.kind == 'curb':
            ground.add(poly.verts, poly.label, M_CURB, poly.color)
        else:
            ground.add(
                poly.verts,
                poly.label,
                _GROUND_MATS[poly.kind],
                poly.color,
                normal=UP.copy(),
                cull=False,
            )
    return ground
