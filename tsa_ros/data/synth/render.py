"""Rasteriser for the synthetic street world: geometry, z-buffer, shading, textures, effects.

Pipeline of :func:`render_frame`:

1. *Meshing*: every object of the scene becomes planar 3D polygons (boxes with only their
   camera-facing faces, camera-facing quads for poles, limbs and tree crowns) tagged with a
   Cityscapes label id, a material and colours.
2. *Rasterisation*: polygons are clipped against the near plane, projected with the pinhole
   camera and filled with ``cv2.fillPoly`` (``LINE_8``, no anti-aliasing) into a polygon-id
   buffer. Ground polygons are painted back-to-front (they never hide anything standing on
   them); everything else goes through a z-buffer on ``1/Z``, which is affine in the pixel
   coordinates for a planar polygon.
3. *Deferred shading*: per pixel, the polygon id gives the label and the surface; the 3D
   point is recovered from the depth, so materials (asphalt, paving, facades with windows,
   foliage, signs ...) are evaluated in world or surface coordinates and stay glued to the
   world as the camera moves. The label map is ``label[polygon id]``: every label pixel is
   exactly the class of the surface drawn there.
4. *Image effects* (RGB only): cast shadows, haze by distance, white balance, saturation,
   contrast, vignetting, blur and sensor noise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from statistics import NormalDist

import cv2
import numpy as np

from tsa_ros.data.camera import CameraModel
from tsa_ros.data.synth.world import (
    BUILDING,
    EGO_VEHICLE,
    FPS,
    NUM_FRAMES,
    POLE,
    SKY,
    STATIC,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    VEGETATION,
    Building,
    Person,
    Scene,
    TwoWheeler,
    Vehicle,
)

NEAR = 0.1  # near clipping plane, metres
_SHIFT = 4  # sub-pixel bits for cv2.fillPoly
_ONE = 1 << _SHIFT

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
_NPAR = 13  # material parameters per polygon
_UP = np.array([0.0, 0.0, 1.0])


# --------------------------------------------------------------------------------------------
# Polygon soup


class _Mesh:
    """Polygons collected for one frame, plus their shading attributes."""

    def __init__(self, eye: np.ndarray) -> None:
        self.eye = tuple(float(c) for c in eye)
        self.verts: list[np.ndarray] = []
        self.label: list[int] = []
        self.mat: list[int] = []
        self.col: list[tuple] = []
        self.col2: list[tuple] = []
        self.col3: list[tuple] = []
        self.normal: list[np.ndarray] = []
        self.frame: list[tuple] = []  # origin, e_s, e_t: 9 floats
        self.params: list[tuple] = []
        self.holes: dict[int, np.ndarray] = {}
        self.shadows: list[np.ndarray] = []  # (n, 2) polygons on the ground plane
        self.contact: list[np.ndarray] = []  # darker contact shadows under vehicles

    def __len__(self) -> int:
        return len(self.verts)

    def add(
        self,
        verts,
        label: int,
        mat: int,
        col,
        *,
        normal=None,
        es=None,
        et=None,
        origin=None,
        col2=None,
        col3=None,
        params: tuple = (),
        cull: bool = True,
        hole=None,
    ) -> bool:
        """Add one planar polygon (vertices counter-clockwise seen from its front).

        Small-vector maths is done on Python floats: the per-polygon numpy overhead would
        dominate a frame otherwise.
        """
        v = np.asarray(verts, dtype=np.float64)
        vl = v.tolist()
        if normal is None:
            normal = _newell(vl)
        else:
            normal = tuple(float(c) for c in normal)
        p0 = vl[0]
        if cull:
            e = self.eye
            if (
                normal[0] * (e[0] - p0[0])
                + normal[1] * (e[1] - p0[1])
                + normal[2] * (e[2] - p0[2])
            ) <= 0.0:
                return False
        if es is None:
            p1 = vl[1]
            es = _unit3((p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]))
        if et is None:
            et = _cross3(normal, es)
        o = p0 if origin is None else origin
        self.verts.append(v)
        self.label.append(label)
        self.mat.append(mat)
        self.col.append(col)
        self.col2.append(col if col2 is None else col2)
        self.col3.append(col if col3 is None else col3)
        self.normal.append(normal)
        self.frame.append((o[0], o[1], o[2], es[0], es[1], es[2], et[0], et[1], et[2]))
        self.params.append(params)
        if hole is not None:
            self.holes[len(self.verts) - 1] = np.asarray(hole, np.float64)
        return True


def _unit3(v) -> tuple[float, float, float]:
    n = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    if n < 1e-12:
        return (float(v[0]), float(v[1]), float(v[2]))
    return (v[0] / n, v[1] / n, v[2] / n)


def _cross3(a, b) -> tuple[float, float, float]:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-12 else v


def _newell(vl) -> tuple[float, float, float]:
    """Unit normal of a planar polygon given as a list of points (right-hand rule)."""
    nx = ny = nz = 0.0
    n = len(vl)
    for i in range(n):
        a, b = vl[i], vl[(i + 1) % n]
        nx += (a[1] - b[1]) * (a[2] + b[2])
        ny += (a[2] - b[2]) * (a[0] + b[0])
        nz += (a[0] - b[0]) * (a[1] + b[1])
    return _unit3((nx, ny, nz))


# --------------------------------------------------------------------------------------------
# Meshing of the world's objects


class _Emitter:
    """Turns scene objects into polygons for the camera at ``eye`` looking along ``fwd``."""

    def __init__(
        self, scene: Scene, t: float, eye: np.ndarray, yaw: float, tan_h: float, mesh: _Mesh
    ) -> None:
        self.scene = scene
        self.t = t
        self.eye = eye
        self.fwd = np.array([math.cos(yaw), math.sin(yaw)])
        self.tan_h = tan_h
        self.mesh = mesh
        st = scene.style
        el, az = st.sun_elevation, st.sun_azimuth
        self.sun = np.array(
            [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]
        )
        self.shadows = st.sun_strength > 0.05

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
        return math.hypot(x - self.eye[0], y - self.eye[1])

    def facing(self, x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
        """Horizontal unit vectors towards the camera and to the camera's right at (x, y)."""
        d = np.array([x - self.eye[0], y - self.eye[1], 0.0])
        d = _unit(d) if np.hypot(d[0], d[1]) > 1e-6 else np.array([*self.fwd, 0.0])
        return -d, np.array([d[1], -d[0], 0.0])

    # primitives -------------------------------------------------------------------------------

    def box(
        self,
        corners: np.ndarray,
        z0: float,
        z1: float,
        label: int,
        mat: int,
        col,
        *,
        top: bool = True,
        face_mat=None,
        **kw,
    ) -> None:
        """Vertical prism over a counter-clockwise footprint; ``face_mat`` overrides per edge."""
        m = self.mesh
        n = len(corners)
        for i in range(n):
            a, b = corners[i], corners[(i + 1) % n]
            es = np.array([b[0] - a[0], b[1] - a[1], 0.0])
            length = float(np.hypot(es[0], es[1]))
            if length < 1e-6:
                continue
            es /= length
            normal = np.array([es[1], -es[0], 0.0])
            if float(np.dot(normal[:2], self.eye[:2] - a)) <= 0.0:
                continue
            v = [[a[0], a[1], z0], [b[0], b[1], z0], [b[0], b[1], z1], [a[0], a[1], z1]]
            fm = face_mat(i, length) if face_mat else None
            if fm is None:
                m.add(
                    v,
                    label,
                    mat,
                    col,
                    normal=normal,
                    es=es,
                    et=_UP,
                    origin=np.array([a[0], a[1], z0]),
                    cull=False,
                    **kw,
                )
            elif fm:
                mt, fcol, fkw = fm
                m.add(
                    v,
                    label,
                    mt,
                    fcol,
                    normal=normal,
                    es=es,
                    et=_UP,
                    origin=np.array([a[0], a[1], z0]),
                    cull=False,
                    **fkw,
                )
        if top and z1 < self.eye[2]:
            m.add(_lift(corners, z1), label, mat, col, normal=_UP, **kw)

    def cylinder(
        self, x: float, y: float, z0: float, z1: float, r: float, label: int, mat: int, col
    ) -> None:
        """A vertical cylinder as a camera-facing quad, shaded round by the material."""
        to_cam, right = self.facing(x, y)
        p = np.array([x, y, 0.0])
        a, b = p - r * right, p + r * right
        v = [[a[0], a[1], z0], [b[0], b[1], z0], [b[0], b[1], z1], [a[0], a[1], z1]]
        sl = float(self.sun @ to_cam), float(self.sun @ right)
        self.mesh.add(
            v,
            label,
            mat,
            col,
            normal=to_cam,
            es=right,
            et=_UP,
            origin=np.array([a[0], a[1], z0]),
            params=(r, *sl),
            cull=False,
        )
        if self.shadows and z1 - z0 > 1.5:
            self._shadow_segment(x, y, z1, max(r, 0.05))

    def limb(
        self,
        a: np.ndarray,
        b: np.ndarray,
        w0: float,
        w1: float,
        label: int,
        col,
        mat: int = M_FLAT,
    ) -> None:
        """A segment between two 3D points drawn as a camera-facing (tapered) quad."""
        a, b = a.tolist(), b.tolist()
        e = self.mesh.eye
        axis = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
        view = ((a[0] + b[0]) / 2 - e[0], (a[1] + b[1]) / 2 - e[1], (a[2] + b[2]) / 2 - e[2])
        side = _cross3(axis, view)
        ns = math.sqrt(side[0] ** 2 + side[1] ** 2 + side[2] ** 2)
        if ns < 1e-9:
            return
        sx, sy, sz = side[0] / ns, side[1] / ns, side[2] / ns
        h0, h1 = w0 / 2, w1 / 2
        v = [
            (a[0] - sx * h0, a[1] - sy * h0, a[2] - sz * h0),
            (a[0] + sx * h0, a[1] + sy * h0, a[2] + sz * h0),
            (b[0] + sx * h1, b[1] + sy * h1, b[2] + sz * h1),
            (b[0] - sx * h1, b[1] - sy * h1, b[2] - sz * h1),
        ]
        # The quad's normal is side x axis (or its opposite); make it face the camera.
        normal = _unit3(_cross3(side, axis))
        if normal[0] * view[0] + normal[1] * view[1] + normal[2] * view[2] > 0:
            normal = (-normal[0], -normal[1], -normal[2])
            v = v[::-1]
        self.mesh.add(v, label, mat, col, normal=normal, cull=False)

    def disc(
        self,
        centre: np.ndarray,
        e1: np.ndarray,
        e2: np.ndarray,
        r: float,
        label: int,
        mat: int,
        col,
        *,
        n: int = 12,
        params: tuple = (),
        cull: bool = True,
        inner: float = 0.0,
        **kw,
    ) -> None:
        """A regular n-gon in the plane spanned by e1, e2 (normal e1 x e2); a ring if inner."""
        cs, sn = _circle(n)
        ring = cs * e1 + sn * e2
        v = centre + r * ring
        hole = centre + inner * ring if inner > 0 else None
        self.mesh.add(
            v,
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
        k = pts[:, 2:3] / max(self.sun[2], 0.25)
        return pts[:, :2] - k * self.sun[:2]

    def shadow_box(self, corners: np.ndarray, z1: float) -> None:
        if not self.shadows:
            return
        top = self._project_down(_lift(corners, z1))
        hull = cv2.convexHull(np.vstack([corners, top]).astype(np.float32))[:, 0, :]
        self.mesh.shadows.append(hull.astype(np.float64))

    def _shadow_segment(self, x: float, y: float, z1: float, r: float) -> None:
        tip = self._project_down(np.array([[x, y, z1]]))[0]
        d = _unit(np.array([tip[0] - x, tip[1] - y]))
        n = np.array([-d[1], d[0]]) * r
        base = np.array([x, y])
        self.mesh.shadows.append(np.array([base - n, tip - n, tip + n, base + n]))

    def shadow_blob(self, x: float, y: float, z: float, r: float) -> None:
        if not self.shadows:
            return
        c = self._project_down(np.array([[x, y, z]]))[0]
        cs, sn = _circle(10)
        d = self.sun[:2] / max(float(np.hypot(*self.sun[:2])), 1e-6)
        stretch = 1.0 / max(self.sun[2], 0.3)
        pts = cs * (d * r * stretch) + sn * (np.array([d[1], -d[0]]) * r)
        self.mesh.shadows.append(c + pts)

    # objects ----------------------------------------------------------------------------------

    def building(self, b: Building) -> None:
        c = b.corners
        cx, cy = c.mean(axis=0)
        radius = float(np.max(np.hypot(c[:, 0] - cx, c[:, 1] - cy)))
        if not self.visible(cx, cy, radius):
            return
        f = b.facade
        h = b.height

        def face(i, length):
            p = (
                f.storey,
                f.ground_floor,
                f.win_w,
                f.win_h,
                f.spacing,
                f.sill,
                float(f.shop),
                f.band,
                f.offset,
                float(f.texture),
                h,
                length,
                float(i),
            )
            return M_FACADE, f.color, dict(col2=f.window_color, col3=f.frame_color, params=p)

        self.box(c, 0.0, h, BUILDING, M_FACADE, f.color, top=b.roof_height <= 0, face_mat=face)
        if b.roof_height > 0:
            top = _lift(c, h)
            r0 = (top[0] + top[3]) / 2 + [0, 0, b.roof_height]
            r1 = (top[1] + top[2]) / 2 + [0, 0, b.roof_height]
            m = self.mesh
            rp = (0.3,)
            m.add([top[0], top[1], r1, r0], BUILDING, M_ROOF, b.roof_color, params=rp)
            m.add([top[2], top[3], r0, r1], BUILDING, M_ROOF, b.roof_color, params=rp)
            fp = face(1, 1.0)[2]
            m.add(
                [top[1], top[2], r1],
                BUILDING,
                M_FACADE,
                f.color,
                es=_unit(top[2] - top[1]),
                et=_UP,
                origin=np.array([*c[1], 0.0]),
                col2=f.window_color,
                col3=f.frame_color,
                params=fp['params'],
            )
            m.add(
                [top[3], top[0], r0],
                BUILDING,
                M_FACADE,
                f.color,
                es=_unit(top[0] - top[3]),
                et=_UP,
                origin=np.array([*c[3], 0.0]),
                col2=f.window_color,
                col3=f.frame_color,
                params=fp['params'],
            )
        self.shadow_box(c, h + 0.5 * b.roof_height)

    def block(self, blk) -> None:
        c = blk.corners
        cx, cy = c.mean(axis=0)
        radius = float(np.max(np.hypot(c[:, 0] - cx, c[:, 1] - cy)))
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
        self.box(c, blk.z0, blk.z1, blk.label, mat, blk.color, params=params)
        if blk.kind in ('wall', 'hedge', 'static'):
            self.shadow_box(c, blk.z1)

    def pole(self, p) -> None:
        if not self.visible(p.x, p.y, p.radius + 1):
            return
        if self.dist(p.x, p.y) > 250:
            return
        self.cylinder(p.x, p.y, p.z0, p.z0 + p.height, p.radius, p.label, M_METAL, p.color)
        if p.radius > 0.3:  # advertising column: a cap on top
            self.cylinder(
                p.x,
                p.y,
                p.z0 + p.height,
                p.z0 + p.height + 0.25,
                p.radius * 1.12,
                p.label,
                M_METAL,
                (0.25, 0.3, 0.27),
            )

    def street_light(self, s) -> None:
        if not self.visible(s.x, s.y, s.arm_length + 1):
            return
        top = s.z0 + s.height
        self.cylinder(s.x, s.y, s.z0, top, 0.09, POLE, M_METAL, s.color)
        d = np.array([math.cos(s.arm_yaw), math.sin(s.arm_yaw), 0.0])
        a = np.array([s.x, s.y, top - 0.3])
        b = a + d * s.arm_length + [0, 0, 0.3]
        self.limb(a, b, 0.08, 0.07, POLE, s.color)
        head = b + d * 0.25 - [0, 0, 0.12]
        fp = _footprint2(head[0], head[1], 0.6, 0.28, s.arm_yaw)
        self.box(fp, head[2], head[2] + 0.14, POLE, M_FLAT, (0.3, 0.31, 0.32))

    def traffic_light(self, tl) -> None:
        if not self.visible(tl.x, tl.y, tl.arm_length + 1):
            return
        top = tl.z0 + tl.pole_height
        self.cylinder(tl.x, tl.y, tl.z0, top, 0.07, POLE, M_METAL, (0.35, 0.37, 0.36))
        f = np.array([math.cos(tl.facing), math.sin(tl.facing), 0.0])
        if tl.arm_length > 0:
            # Mast arm towards the road centre (+y on the right side), box hanging at its end.
            a = np.array([tl.x, tl.y, top - 0.2])
            b = a + np.array([0.0, tl.arm_length, 0.0])
            self.limb(a, b, 0.12, 0.1, POLE, (0.35, 0.37, 0.36))
            centre = b + f * 0.2 - [0, 0, 1.1]
        else:
            centre = np.array([tl.x, tl.y, tl.z0 + tl.box_z]) + f * 0.2
        w, hgt = (0.3, 0.65) if tl.pedestrian else (0.32, 0.95)
        fp = _footprint2(centre[0], centre[1], 0.25, w, tl.facing)

        def face(i, length):
            if i == 1:  # edge 1 of a footprint faces its yaw
                return (
                    M_TLIGHT,
                    (0.08, 0.08, 0.08),
                    dict(params=(w, hgt, float(tl.state), 2.0 if tl.pedestrian else 3.0)),
                )
            return None

        self.box(
            fp,
            centre[2],
            centre[2] + hgt,
            TRAFFIC_LIGHT,
            M_FLAT,
            (0.12, 0.12, 0.11),
            face_mat=face,
        )

    def sign(self, sg) -> None:
        if not self.visible(sg.x, sg.y, 1.0) or self.dist(sg.x, sg.y) > 200:
            return
        top = sg.z0 + sg.pole_height
        self.cylinder(sg.x, sg.y, sg.z0, top, 0.035, POLE, M_METAL, (0.5, 0.52, 0.53))
        f = np.array([math.cos(sg.facing), math.sin(sg.facing), 0.0])
        right = np.array([-f[1], f[0], 0.0])
        for pl in sg.plates:
            c = np.array([sg.x, sg.y, sg.z0 + pl.z]) + f * 0.06
            r = pl.size / 2
            shape, n, rot, hw, hh = _SHAPES[pl.shape]
            ang = rot + np.linspace(0, 2 * np.pi, n, endpoint=False)
            sx, sy = np.cos(ang) * r, np.sin(ang) * r
            if pl.shape == 'rect':
                sx = np.array([-1, 1, 1, -1]) * r * hw
                sy = np.array([-1, -1, 1, 1]) * r * hh
            v = c + sx[:, None] * right + sy[:, None] * _UP
            front = float(np.dot(f, self.eye - c)) > 0
            if front:
                self.mesh.add(
                    v,
                    TRAFFIC_SIGN,
                    M_SIGN,
                    pl.face,
                    normal=f,
                    es=right,
                    et=_UP,
                    origin=c,
                    col2=pl.border,
                    params=(shape, r, hw, hh),
                    cull=False,
                )
            else:  # the back of a sign is 'static' in Cityscapes
                self.mesh.add(v[::-1], STATIC, M_FLAT, (0.5, 0.51, 0.52), normal=-f, cull=False)

    def tree(self, tr) -> None:
        rmax = max(c.radius for c in tr.crowns) + 2
        if not self.visible(tr.x, tr.y, rmax):
            return
        far = self.dist(tr.x, tr.y) > 200
        self.cylinder(
            tr.x,
            tr.y,
            tr.z0,
            tr.z0 + tr.trunk_height,
            tr.trunk_radius,
            VEGETATION,
            M_BARK,
            tr.trunk_color,
        )
        for cr in tr.crowns:
            cx, cy, cz = tr.x + cr.dx, tr.y + cr.dy, tr.z0 + cr.z
            to_cam, right = self.facing(cx, cy)
            px, pz = _crown_outline(cr.seed, 10 if far else 22)
            px, pz = px * cr.radius, pz * cr.radius
            centre = np.array([cx, cy, cz])
            v = centre + px[:, None] * right + pz[:, None] * _UP
            p = (
                cr.radius,
                float(self.sun @ to_cam),
                float(self.sun @ right),
                float(self.sun[2]),
                float(cr.seed % 997),
            )
            self.mesh.add(
                v,
                VEGETATION,
                M_FOLIAGE,
                tr.color,
                normal=to_cam,
                es=right,
                et=_UP,
                origin=centre,
                params=p,
                cull=False,
            )
            self.shadow_blob(cx, cy, cz, cr.radius * 0.9)

    # road users -------------------------------------------------------------------------------

    def vehicle(self, v: Vehicle) -> None:
        x, y, yaw = v.pose(self.t)
        if not self.visible(x, y, v.length / 2 + 1):
            return
        L, W, H = v.length, v.width, v.height
        c, s = math.cos(yaw), math.sin(yaw)
        fwd = np.array([c, s, 0.0])
        lat = np.array([-s, c, 0.0])
        centre = np.array([x, y, 0.0])
        dist = self.dist(x, y)
        lab = v.label

        def fp(x0, x1, w):  # footprint in the vehicle frame, x along the heading
            pts = np.array([[x0, -w / 2], [x1, -w / 2], [x1, w / 2], [x0, w / 2]])
            return pts[:, :1] * fwd[:2] + pts[:, 1:] * lat[:2] + centre[:2]

        glass = (0.09, 0.1, 0.12)
        if v.kind in ('car', 'van'):
            clear, r_wheel = 0.3, 0.32 if v.kind == 'car' else 0.35
            belt = 0.84 if v.kind == 'car' else H * 0.5
            self.box(
                fp(-L / 2, L / 2, W), clear, belt, lab, M_PAINT, v.color, params=(belt - clear,)
            )
            if v.kind == 'car':
                b0, b1, t0, t1 = -0.34 * L, 0.2 * L, -0.28 * L, 0.03 * L
            else:
                b0, b1, t0, t1 = -0.5 * L, 0.34 * L, -0.5 * L, 0.24 * L
            bot = _lift(fp(b0, b1, W * 0.96), belt)
            top = _lift(fp(t0, t1, W * (0.8 if v.kind == 'car' else 0.92)), H)
            self._hexa(bot, top, lab, v, glass)
            self._wheels(v, fwd, lat, centre, L * 0.5 - 0.8 * r_wheel / 0.32, W, r_wheel, dist)
            self.mesh.contact.append(fp(-L / 2 - 0.15, L / 2 + 0.15, W + 0.25))
            self.shadow_box(fp(-L / 2, L / 2, W), H * 0.85)
        else:
            clear = 0.15 if v.kind == 'tram' else 0.35
            r_wheel = 0.5
            if v.kind == 'truck':
                cab = 2.1
                cab_h = min(H - 0.2, 2.9)
                self.box(
                    fp(L / 2 - cab, L / 2, W),
                    clear + 0.3,
                    cab_h,
                    lab,
                    M_BODY,
                    v.accent,
                    face_mat=self._bus_faces(v, cab_h - clear - 0.3, cab=True),
                )
                self.box(
                    fp(-L / 2, L / 2 - cab - 0.15, W),
                    clear + 0.5,
                    H,
                    lab,
                    M_PAINT,
                    v.color,
                    face_mat=self._plain_rear(v),
                )
                self.box(
                    fp(-L / 2 + 0.3, L / 2 - 0.2, W * 0.9),
                    clear,
                    clear + 0.5,
                    lab,
                    M_FLAT,
                    (0.12, 0.12, 0.13),
                    top=False,
                )
            else:
                self.box(
                    fp(-L / 2, L / 2, W),
                    clear,
                    H,
                    lab,
                    M_BODY,
                    v.color,
                    face_mat=self._bus_faces(v, H - clear),
                )
            if v.kind != 'tram':
                self._wheels(v, fwd, lat, centre, L * 0.5 - 2.2, W, r_wheel, dist)
            self.mesh.contact.append(fp(-L / 2 - 0.2, L / 2 + 0.2, W + 0.3))
            self.shadow_box(fp(-L / 2, L / 2, W), H)

    def _bus_faces(self, v: Vehicle, height: float, cab: bool = False):
        def faces(i, length):
            if i in (0, 2):  # sides: a band of windows with pillars
                if cab:
                    return (
                        M_BODY,
                        v.accent,
                        dict(
                            col2=(0.1, 0.11, 0.13),
                            params=(height * 0.45, height * 0.9, 9.0, 0.0, 0.3, 1.0, length),
                        ),
                    )
                period = 1.6 if v.kind == 'tram' else 1.35
                return (
                    M_BODY,
                    v.color,
                    dict(
                        col2=(0.09, 0.1, 0.12),
                        params=(height * 0.32, height * 0.84, period, 0.14, 0.4, 0.4, length),
                    ),
                )
            if i == 1 or (i == 3 and v.kind == 'tram'):  # windscreen
                return (
                    M_BODY,
                    v.color if not cab else v.accent,
                    dict(
                        col2=(0.1, 0.11, 0.13),
                        params=(height * 0.35, height * 0.92, 9.0, 0.0, 0.12, 0.12, length),
                    ),
                )
            return (
                M_BODY,
                v.color,
                dict(
                    col2=(0.1, 0.11, 0.13),
                    params=(height * 0.55, height * 0.9, 9.0, 0.0, 0.3, 0.3, length),
                ),
            )

        return faces

    def _plain_rear(self, v: Vehicle):
        def faces(i, length):
            if i == 3:
                return M_PAINT, v.color, dict(params=(0.0, -1.0))
            return None

        return faces

    def _hexa(self, bot: np.ndarray, top: np.ndarray, lab: int, v: Vehicle, glass) -> None:
        """Car cabin: a hexahedron with glass sides and a painted roof."""
        m = self.mesh
        for i in range(4):
            j = (i + 1) % 4
            quad = np.array([bot[i], bot[j], top[j], top[i]])
            h = float(top[i, 2] - bot[i, 2])
            et = _unit(top[i] - bot[i])
            if v.kind == 'van' and i != 1:  # painted van body with a band of windows
                length = float(np.linalg.norm(bot[j] - bot[i]))
                par = (
                    (0.1 * h, 0.75 * h, 1.7, 0.12, 0.25, 0.25, length)
                    if i != 3
                    else (0.2 * h, 0.75 * h, 9.0, 0.0, 0.2, 0.2, length)
                )
                m.add(quad, lab, M_BODY, v.color, col2=glass, params=par, et=et)
            else:
                m.add(quad, lab, M_GLASS, glass, params=(h,), et=et)
        if top[0, 2] < self.eye[2]:
            m.add(top, lab, M_PAINT, v.color, normal=_UP.copy(), params=(0.0, -1.0))

    def _wheels(self, v, fwd, lat, centre, half_base, W, r, dist) -> None:
        yaw = math.atan2(fwd[1], fwd[0])
        for sx in (-half_base, half_base):
            axle = centre + fwd * sx
            for sy in (-1, 1):
                p = axle + lat * sy * (W / 2 - 0.12) + [0, 0, r]
                # Outer cap (only the side facing the camera survives culling).
                self.disc(
                    p + lat * sy * 0.13,
                    -fwd * sy,
                    _UP,
                    r,
                    v.label,
                    M_TIRE,
                    (0.05, 0.05, 0.055),
                    n=12 if dist < 40 else 8,
                    params=(r,),
                )
            if dist < 60:
                # Both tyres of an axle and the dark gap between them, seen from front/behind.
                fpw = _footprint2(axle[0], axle[1], 1.5 * r, W - 0.25, yaw)
                self.box(
                    fpw,
                    0.0,
                    1.8 * r,
                    v.label,
                    M_TIRE,
                    (0.05, 0.05, 0.055),
                    top=False,
                    params=(0.0,),
                )

    def decals(self, v: Vehicle) -> None:
        """Lights and number plates in front of car/van front and rear faces."""
        x, y, yaw = v.pose(self.t)
        if v.kind not in ('car', 'van') or not self.visible(x, y, v.length):
            return
        if self.dist(x, y) > 80:
            return
        c, s = math.cos(yaw), math.sin(yaw)
        fwd = np.array([c, s, 0.0])
        centre = np.array([x, y, 0.0])
        W, L = v.width, v.length
        for sign in (1, -1):  # front, rear
            n = fwd * sign
            base = centre + n * (L / 2 + 0.012)
            if float(np.dot(n, self.eye - base)) <= 0:
                continue
            right = np.array(_cross3(n, _UP))  # viewer's right when looking at the face
            lamp = (0.85, 0.85, 0.8) if sign > 0 else (0.55, 0.05, 0.05)
            for sx in (-1, 1):
                cx = sx * (W / 2 - 0.22)
                self._rect_decal(base, right, cx, 0.68, 0.34, 0.14, lamp, v.label)
            self._rect_decal(base, right, 0.0, 0.42, 0.52, 0.12, (0.85, 0.85, 0.82), v.label)

    def _rect_decal(self, base, right, cx, cz, w, h, col, label) -> None:
        o = base + right * cx + _UP * cz
        v = [
            o - right * w / 2 - _UP * h / 2,
            o + right * w / 2 - _UP * h / 2,
            o + right * w / 2 + _UP * h / 2,
            o - right * w / 2 + _UP * h / 2,
        ]
        self.mesh.add(v, label, M_FLAT, col, cull=False)

    def person(
        self,
        p: Person,
        base: np.ndarray | None = None,
        yaw: float | None = None,
        riding: str | None = None,
    ) -> None:
        """Articulated pedestrian (or a rider seated at ``base`` = hip position)."""
        if base is None:
            x, y, yaw = p.pose(self.t)
            if not self.visible(x, y, 1.0) or self.dist(x, y) > 150:
                return
            foot = np.array([x, y, p.z0])
        H = p.height
        f = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        lat = np.array([-f[1], f[0], 0.0])
        lab = p.label
        to_cam, right = self.facing(*(foot[:2] if base is None else base[:2]))
        # Apparent torso width: broad from the front, narrow from the side.
        w_t = p.width * abs(float(lat @ right)) + 0.26 * H / 1.75 * abs(float(f @ right))
        if riding is None:
            hip = foot + [0, 0, 0.52 * H]
            ph = p.gait(self.t)
            swing = 0.38 * math.sin(ph) if p.speed > 0 else 0.0
            lean = 0.0
        else:
            hip = base
            swing = 0.0
            lean = 0.35 if riding == 'bicycle' else 0.2
        shoulder = hip + (f * math.sin(lean) + _UP * math.cos(lean)) * 0.3 * H
        neck = hip + (f * math.sin(lean) + _UP * math.cos(lean)) * 0.36 * H
        head = neck + _UP * 0.075 * H + f * 0.02
        leg_w = 0.075 * H / 0.86 * 0.75
        hips = [hip + lat * k * 0.09 * H / 1.75 for k in (-1, 1)]
        for k, hp in enumerate(hips):
            if riding is None:
                a = swing if k == 0 else -swing
                knee = hp + (f * math.sin(a) - _UP * math.cos(a)) * 0.25 * H
                foot_k = knee + (f * math.sin(a - 0.25 * abs(a)) - _UP * math.cos(a)) * 0.25 * H
            else:
                pedal = 0.5 * math.sin(p.phase + k * math.pi)
                knee = hp + f * 0.26 * H + _UP * (0.02 + 0.05 * pedal) * H
                foot_k = hp + f * (0.12 * H) - _UP * (0.3 + 0.05 * pedal) * H
            self.limb(hp, knee, leg_w * 1.25, leg_w, lab, p.pants)
            self.limb(knee, foot_k, leg_w, leg_w * 0.8, lab, p.pants)
            toe = foot_k + f * 0.12 - _UP * 0.02
            self.limb(foot_k, toe, 0.09, 0.07, lab, (0.08, 0.07, 0.07))
        # Torso: a trapezoid from the (narrower) hips to the shoulders, then a neck.
        self.limb(hip - _UP * 0.04 * H, shoulder, w_t * 0.72, w_t, lab, p.shirt)
        self.limb(shoulder - _UP * 0.01 * H, neck, 0.05 * H, 0.04 * H, lab, p.skin)
        for k in (-1, 1):
            sh = shoulder + lat * k * 0.2 * H / 1.75
            a = -swing * k * 0.8
            if riding is None:
                elbow = sh + (f * math.sin(a) - _UP * math.cos(a)) * 0.17 * H
                hand = elbow + (f * math.sin(a + 0.2) - _UP * math.cos(a + 0.2)) * 0.16 * H
            else:
                elbow = sh + f * 0.16 * H - _UP * 0.08 * H
                hand = elbow + f * 0.17 * H - _UP * 0.02 * H
            self.limb(sh, elbow, 0.055 * H, 0.048 * H, lab, p.shirt)
            self.limb(elbow, hand, 0.048 * H, 0.04 * H, lab, p.skin)
        # Head: skin ellipse and a hair cap slightly in front of its top half.
        self.disc(head, right, _UP, 0.068 * H, lab, M_FLAT, p.skin, n=10, cull=False)
        hc = head + to_cam * 0.012 + _UP * 0.03 * H
        ang = np.linspace(0, np.pi, 7)
        r = 0.07 * H
        pts = hc + (np.cos(ang)[:, None] * right * r + np.sin(ang)[:, None] * _UP * r * 0.7)
        pts = np.vstack([pts, hc - right * r * 0.9 - _UP * 0.01])
        self.mesh.add(pts, lab, M_FLAT, p.hair, normal=to_cam, cull=False)
        if riding is None:
            self.shadow_blob(foot[0], foot[1], 0.9, 0.25)

    def two_wheeler(self, tw: TwoWheeler) -> None:
        x, y, yaw = tw.pose(self.t)
        if not self.visible(x, y, 1.5) or self.dist(x, y) > 150:
            return
        lab = tw.label
        f = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        lat = np.array([-f[1], f[0], 0.0])
        base = np.array([x, y, tw.z0])
        to_cam, right = self.facing(x, y)
        edge_on = abs(float(f @ right)) < 0.35  # seen (almost) from behind or in front
        if tw.kind == 'bicycle':
            r, half = 0.34, 0.52
            rear, front = base + f * -half + _UP * r, base + f * half + _UP * r
            crank = base + _UP * 0.3
            seat = base - f * 0.2 + _UP * 0.9
            head = base + f * 0.38 + _UP * 0.95
            tube = (0.12, 0.12, 0.12) if tw.color[0] < 0.2 else tw.color
            for a, b in (
                (rear, crank),
                (crank, seat),
                (seat, rear),
                (crank, head),
                (seat, head),
                (head, front),
            ):
                self.limb(a, b, 0.035, 0.035, lab, tube)
            self.limb(
                head - lat * 0.28, head + lat * 0.28 + _UP * 0.02, 0.03, 0.03, lab, (0.1, 0.1, 0.1)
            )
            for c in (rear, front):
                if edge_on:
                    self.limb(c - _UP * r, c + _UP * r, 0.045, 0.045, lab, (0.06, 0.06, 0.06))
                else:
                    self.disc(
                        c,
                        f,
                        _UP,
                        r,
                        lab,
                        M_FLAT,
                        (0.06, 0.06, 0.06),
                        n=14,
                        cull=False,
                        inner=r - 0.05,
                    )
            hip = seat + _UP * 0.05
        else:
            r, half = 0.31, 0.7
            rear, front = base + f * -half + _UP * r, base + f * half + _UP * r
            for c in (rear, front):
                self.disc(
                    c, f, _UP, r, lab, M_TIRE, (0.05, 0.05, 0.05), n=12, cull=False, params=(r,)
                )
                fpw = _footprint2(c[0], c[1], 1.6 * r, 0.14, yaw)
                self.box(
                    fpw,
                    tw.z0,
                    tw.z0 + 2 * r,
                    lab,
                    M_TIRE,
                    (0.05, 0.05, 0.05),
                    top=False,
                    params=(0.0,),
                )
            body = _footprint2(x, y, 1.1, 0.42, yaw)
            self.box(body, tw.z0 + 0.35, tw.z0 + 0.85, lab, M_PAINT, tw.color, params=(0.0, -1.0))
            head = base + f * 0.55 + _UP * 1.0
            self.limb(base + f * 0.5 + _UP * 0.85, head, 0.07, 0.06, lab, (0.15, 0.15, 0.15))
            self.limb(head - lat * 0.35, head + lat * 0.35, 0.04, 0.04, lab, (0.1, 0.1, 0.1))
            hip = base - f * 0.15 + _UP * 0.9
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
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rs = np.random.default_rng(1234)
    wob = np.ones((64, n))
    for k in range(2, 8):
        amp = rs.uniform(0.03, 0.12, (64, 1)) / math.sqrt(k - 1)
        wob += amp * np.cos(k * ang + rs.uniform(0, 7, (64, 1)))
    return np.cos(ang) * wob, np.sin(ang) * wob * 0.88


def _crown_outline(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    px, pz = _crown_outlines(n)
    return px[seed % 64], pz[seed % 64]


def _footprint2(cx: float, cy: float, length: float, width: float, yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * [length / 2, width / 2]
    return half @ np.array([[c, s], [-s, c]]) + [cx, cy]


def _emit_scene(scene: Scene, t: float, eye: np.ndarray, yaw: float, tan_h: float) -> _Mesh:
    mesh = _Mesh(eye)
    em = _Emitter(scene, t, eye, yaw, tan_h, mesh)
    for b in scene.buildings:
        em.building(b)
    for blk in scene.blocks:
        em.block(blk)
    for p in scene.poles:
        em.pole(p)
    for s in scene.lights:
        em.street_light(s)
    for tl in scene.traffic_lights:
        em.traffic_light(tl)
    for sg in scene.signs:
        em.sign(sg)
    for tr in scene.trees:
        em.tree(tr)
    for v in scene.vehicles:
        em.vehicle(v)
        em.decals(v)
    for tw in scene.two_wheelers:
        em.two_wheeler(tw)
    for p in scene.persons:
        em.person(p)
    return mesh


# --------------------------------------------------------------------------------------------
# Camera


def _camera_pose(scene: Scene, cam: CameraModel, t: float) -> tuple[np.ndarray, np.ndarray, float]:
    """World position of the camera, world->camera rotation (rows: right, down, forward), yaw."""
    x, y, yaw, dpitch = scene.ego.pose(t)
    yaw_c = yaw + cam.yaw
    pitch = cam.pitch + dpitch
    cy, sy = math.cos(yaw_c), math.sin(yaw_c)
    cp, sp = math.cos(pitch), math.sin(pitch)
    fwd = np.array([cp * cy, cp * sy, -sp])
    right = np.array([sy, -cy, 0.0])
    down = np.cross(fwd, right)
    cr, sr = math.cos(cam.roll), math.sin(cam.roll)
    rot = np.stack([cr * right + sr * down, -sr * right + cr * down, fwd])
    return np.array([x, y, cam.mount_height]), rot, yaw_c


def _clip(pts: np.ndarray, normal: np.ndarray, offset: float) -> np.ndarray:
    """Sutherland-Hodgman: keep the part of a polygon with pts @ normal + offset >= 0."""
    d = pts @ normal + offset
    out = []
    n = len(pts)
    for i in range(n):
        j = (i + 1) % n
        if d[i] >= 0:
            out.append(pts[i])
        if (d[i] >= 0) != (d[j] >= 0):
            k = d[i] / (d[i] - d[j])
            out.append(pts[i] + k * (pts[j] - pts[i]))
    return np.array(out) if out else np.zeros((0, 3))


# --------------------------------------------------------------------------------------------
# Rasterisation


class _Tables:
    """Per-polygon attribute arrays, indexed by polygon id."""

    def __init__(self, meshes: Iterable[_Mesh], extra: int) -> None:
        lab, mat, col, col2, col3, nrm, frm, par = [], [], [], [], [], [], [], []
        for m in meshes:
            lab += m.label
            mat += m.mat
            col += m.col
            col2 += m.col2
            col3 += m.col3
            nrm += m.normal
            frm += m.frame
            par += [tuple(p) + (0.0,) * (_NPAR - len(p)) for p in m.params]
        n = len(lab) + extra
        self.label = np.zeros(n + 1, np.uint8)  # last entry: sky (index -1)
        self.mat = np.zeros(n + 1, np.uint8)
        self.col = np.zeros((n + 1, 3), np.float32)
        self.col2 = np.zeros((n + 1, 3), np.float32)
        self.col3 = np.zeros((n + 1, 3), np.float32)
        self.normal = np.zeros((n + 1, 3), np.float32)
        self.origin = np.zeros((n + 1, 3), np.float32)
        self.es = np.zeros((n + 1, 3), np.float32)
        self.et = np.zeros((n + 1, 3), np.float32)
        self.params = np.zeros((n + 1, _NPAR), np.float32)
        k = len(lab)
        if k:
            self.label[:k] = lab
            self.mat[:k] = mat
            self.col[:k] = col
            self.col2[:k] = col2
            self.col3[:k] = col3
            self.normal[:k] = nrm
            f = np.array(frm, np.float64)
            self.origin[:k], self.es[:k], self.et[:k] = f[:, 0:3], f[:, 3:6], f[:, 6:9]
            self.params[:k] = par
        self.label[-1] = SKY
        self.iz_a = np.zeros(n + 1, np.float32)  # 1/Z = a u + b v + c
        self.iz_b = np.zeros(n + 1, np.float32)
        self.iz_c = np.zeros(n + 1, np.float32)
        self.count = k


def _project_mesh(mesh, eye: np.ndarray, rot: np.ndarray, cam: CameraModel):
    """Per visible polygon: (index, fixed-point pixel polygons, bbox, 1/Z plane, 1/Z range).

    The fixed-point polygons (``cv2.fillPoly`` with ``_SHIFT`` sub-pixel bits) are a list of
    the outline plus, for rings, the hole; bbox = (u0, u1, v0, v1) inclusive, clipped to the
    image; the plane gives 1/Z = a u + b v + c.
    """
    if not len(mesh):
        return
    counts = np.array([len(v) for v in mesh.verts])
    offs = np.concatenate([[0], np.cumsum(counts)])
    starts = offs[:-1]
    world = np.concatenate(mesh.verts)
    xc = (world - eye) @ rot.T
    z = xc[:, 2]
    zmin = np.minimum.reduceat(z, starts)
    zmax = np.maximum.reduceat(z, starts)
    # Exact plane of each polygon in camera coordinates (Newell's method).
    nxt = np.arange(len(xc)) + 1
    nxt[offs[1:] - 1] = starts
    p, q = xc, xc[nxt]
    cr = np.stack(
        [
            (p[:, 1] - q[:, 1]) * (p[:, 2] + q[:, 2]),
            (p[:, 2] - q[:, 2]) * (p[:, 0] + q[:, 0]),
            (p[:, 0] - q[:, 0]) * (p[:, 1] + q[:, 1]),
        ],
        axis=1,
    )
    nrm = np.add.reduceat(cr, starts, axis=0)
    cen = np.add.reduceat(xc, starts, axis=0) / counts[:, None]
    d = np.sum(nrm * cen, axis=1)
    scale = np.linalg.norm(nrm, axis=1) * np.linalg.norm(cen, axis=1)
    fx, fy, cx, cy = cam.fx, cam.fy, cam.cx, cam.cy
    W, H = cam.width, cam.height
    zs = np.where(z > NEAR, z, 1.0)
    uv = np.stack([fx * xc[:, 0] / zs + cx, fy * xc[:, 1] / zs + cy], axis=1)
    umin = np.minimum.reduceat(uv[:, 0], starts)
    umax = np.maximum.reduceat(uv[:, 0], starts)
    vmin = np.minimum.reduceat(uv[:, 1], starts)
    vmax = np.maximum.reduceat(uv[:, 1], starts)
    izs = 1.0 / zs
    izmin = np.minimum.reduceat(izs, starts)
    izmax = np.maximum.reduceat(izs, starts)
    guard = 4.0 * (W + H)
    ok = (zmax > NEAR) & (np.abs(d) > 1e-7 * np.maximum(scale, 1e-12))
    # Entirely in front of the near plane but outside the image: nothing to draw.
    ok &= ~((zmin > NEAR) & ((umax < -0.5) | (umin > W - 0.5) | (vmax < -0.5) | (vmin > H - 0.5)))
    simple = (
        (zmin > NEAR) & (umin > -guard) & (umax < W + guard) & (vmin > -guard) & (vmax < H + guard)
    )
    fixed = np.rint(np.clip(uv, -guard, W + H + guard) * _ONE).astype(np.int32)
    bbox = np.stack([np.floor(umin), np.ceil(umax), np.floor(vmin), np.ceil(vmax)], axis=1)
    bbox = np.clip(bbox, -1, [W, W, H, H]).astype(np.int64)
    a_all = nrm / np.where(d == 0, 1.0, d)[:, None]
    pa = a_all[:, 0] / fx
    pb = a_all[:, 1] / fy
    pc = a_all[:, 2] - a_all[:, 0] * cx / fx - a_all[:, 1] * cy / fy
    for i in np.flatnonzero(ok).tolist():
        plane = (pa[i], pb[i], pc[i])
        hole = mesh.holes.get(i)
        if simple[i]:
            polys = [fixed[offs[i] : offs[i + 1]]]
            u0, u1, v0, v1 = bbox[i].tolist()
            rng_iz = (izmin[i], izmax[i])
        else:
            pts = _clip(xc[offs[i] : offs[i + 1]], np.array([0.0, 0.0, 1.0]), -NEAR)
            # Guard band: keep projected coordinates in a sane range.
            for nvec in (
                (-fx, 0.0, guard - cx),
                (fx, 0.0, guard + cx),
                (0.0, -fy, guard - cy),
                (0.0, fy, guard + cy),
            ):
                if len(pts) < 3:
                    break
                pts = _clip(pts, np.array(nvec), 0.0)
            if len(pts) < 3:
                continue
            puv = np.stack(
                [fx * pts[:, 0] / pts[:, 2] + cx, fy * pts[:, 1] / pts[:, 2] + cy], axis=1
            )
            polys = [np.rint(puv * _ONE).astype(np.int32)]
            u0, v0 = max(math.floor(puv[:, 0].min()), 0), max(math.floor(puv[:, 1].min()), 0)
            u1 = min(math.ceil(puv[:, 0].max()), W - 1)
            v1 = min(math.ceil(puv[:, 1].max()), H - 1)
            rng_iz = (float(np.min(1 / pts[:, 2])), float(np.max(1 / pts[:, 2])))
            hole = None  # rings are small and never clipped in practice
        u0, v0 = max(u0, 0), max(v0, 0)
        u1, v1 = min(u1, W - 1), min(v1, H - 1)
        if u1 < u0 or v1 < v0:
            continue
        if hole is not None:
            hc = (hole - eye) @ rot.T
            if np.all(hc[:, 2] > NEAR):
                huv = np.stack(
                    [fx * hc[:, 0] / hc[:, 2] + cx, fy * hc[:, 1] / hc[:, 2] + cy], axis=1
                )
                polys.append(np.rint(huv * _ONE).astype(np.int32))
        yield i, polys, (u0, u1, v0, v1), plane, rng_iz


def _fixed(uv: np.ndarray) -> np.ndarray:
    return np.rint(uv * _ONE).astype(np.int32)


def _rasterize(ground: _Mesh, objects: _Mesh, tables: _Tables, eye, rot, cam: CameraModel):
    W, H = cam.width, cam.height
    gid = np.full((H, W), -1, np.int32)
    n_ground = len(ground)
    # Ground: painter's order, no depth test (it never hides what stands on it).
    for i, polys, _, plane, _ in _project_mesh(ground, eye, rot, cam):
        cv2.fillPoly(gid, polys, i, cv2.LINE_8, _SHIFT)
        tables.iz_a[i], tables.iz_b[i], tables.iz_c[i] = plane
    # Everything else: z-buffer on 1/Z (larger = nearer).
    oid = np.full((H, W), -1, np.int32)
    zbuf = np.zeros((H, W), np.float32)
    us = np.arange(W, dtype=np.float32)
    vs = np.arange(H, dtype=np.float32)
    for i, polys, (u0, u1, v0, v1), plane, (lo, hi) in _project_mesh(objects, eye, rot, cam):
        mask = np.zeros((v1 - v0 + 1, u1 - u0 + 1), np.uint8)
        cv2.fillPoly(mask, polys, 1, cv2.LINE_8, _SHIFT, (-u0 * _ONE, -v0 * _ONE))
        a, b, c = plane
        iz = (np.float32(a) * us[u0 : u1 + 1])[None, :] + (
            np.float32(b) * vs[v0 : v1 + 1] + np.float32(c)
        )[:, None]
        # 1/Z is affine over the polygon, so its extremes are at the vertices; clamping keeps
        # pixels whose centres lie just outside a near edge-on polygon sane.
        iz.clip(np.float32(lo * 0.999), np.float32(hi * 1.001), out=iz)
        sub = zbuf[v0 : v1 + 1, u0 : u1 + 1]
        win = iz > sub
        win &= mask.view(bool)
        np.copyto(sub, iz, where=win)
        np.copyto(oid[v0 : v1 + 1, u0 : u1 + 1], n_ground + i, where=win)
        tables.iz_a[n_ground + i], tables.iz_b[n_ground + i], tables.iz_c[n_ground + i] = plane
    return gid, oid, zbuf


# --------------------------------------------------------------------------------------------
# Textures


@functools.lru_cache(maxsize=1)
def _tiles() -> np.ndarray:
    """Four 256x256 tileable noise textures in [-1, 1], fixed for the whole data set."""
    n = 256
    rng = np.random.default_rng(0x5EED)
    fx = np.fft.fftfreq(n)[:, None]
    fy = np.fft.fftfreq(n)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    out = []
    for beta, lo, hi in ((3.0, 0.0, 0.06), (2.0, 0.0, 0.2), (1.0, 0.05, 0.5), (2.5, 0.01, 0.12)):
        spec = np.fft.fft2(rng.standard_normal((n, n)))
        amp = f ** (-beta / 2) * ((f >= lo) & (f <= hi))
        amp[0, 0] = 0.0
        img = np.real(np.fft.ifft2(spec * amp))
        img = (img - img.mean()) / (img.std() + 1e-9)
        out.append(np.clip(img / 2.5, -1, 1))
    return np.stack(out).astype(np.float32)


def _noise(k: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample tile k (bilinear, wrapping) at texel coordinates u, v (1-D arrays)."""
    n = u.size
    if n == 0:
        return np.zeros(0, np.float32)
    cols = 1024
    rows = -(-n // cols)
    mu = np.zeros(rows * cols, np.float32)
    mv = np.zeros(rows * cols, np.float32)
    mu[:n] = _wrap(u, 256.0)
    mv[:n] = _wrap(v, 256.0)
    out = cv2.remap(
        _tiles()[k],
        mu.reshape(rows, cols),
        mv.reshape(rows, cols),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_WRAP,
    )
    return out.ravel()[:n]


def _wrap(x: np.ndarray, period) -> np.ndarray:
    """x modulo period in [0, period) (much faster than np.mod on float arrays)."""
    return x - period * np.floor(x / period)


def _hash(i: np.ndarray, j: np.ndarray, seed: float = 0.0) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer cell (i, j)."""
    salt = np.asarray(np.asarray(seed) * 83492791, dtype=np.int64)
    h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ salt
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


# --------------------------------------------------------------------------------------------
# Deferred shading


class _Pixels:
    """The pixels of one material: image indices, polygon ids and their 3D points."""

    def __init__(self, ctx, sel: np.ndarray) -> None:
        self.ctx = ctx
        self.pix = ctx.pix[sel]
        self.q = ctx.q[sel]
        self.px, self.py, self.pz = ctx.px[sel], ctx.py[sel], ctx.pz[sel]
        self.dist = ctx.dist[sel]
        self.n = len(self.pix)

    def st(self) -> tuple[np.ndarray, np.ndarray]:
        """Surface coordinates (metres) along the polygon's e_s / e_t axes."""
        tb, q = self.ctx.tables, self.q
        o = np.take(tb.origin, q, axis=0)
        es, et = np.take(tb.es, q, axis=0), np.take(tb.et, q, axis=0)
        dx, dy, dz = self.px - o[:, 0], self.py - o[:, 1], self.pz - o[:, 2]
        s = dx * es[:, 0] + dy * es[:, 1] + dz * es[:, 2]
        t = dx * et[:, 0] + dy * et[:, 1] + dz * et[:, 2]
        return s, t

    def par(self, k: int) -> np.ndarray:
        return np.take(self.ctx.tables.params[:, k], self.q)

    def col(self, which: int = 1) -> np.ndarray:
        tb = self.ctx.tables
        return np.take((tb.col, tb.col2, tb.col3)[which - 1], self.q, axis=0)

    def footprint(self) -> np.ndarray:
        """Approximate size in metres of one pixel on the surface (for texture fading)."""
        return self.dist * self.ctx.inv_f


class _Shader:
    """Materials and lighting of the deferred pass.

    ``render_frame`` fills in the per-pixel arrays (``pix``: flat image index, ``q``: polygon
    id, ``px/py/pz``: world point, ``dist``: distance to the camera) and, with effects on, the
    ground's ``sunlit`` / ``occl`` (ambient occlusion) factors.
    """

    def __init__(
        self, scene: Scene, tables: _Tables, cam: CameraModel, eye, rot, textures: bool
    ) -> None:
        self.pix = self.q = self.px = self.py = self.pz = self.dist = None
        self.sunlit = self.occl = None
        self.scene = scene
        self.style = scene.style
        self.tables = tables
        self.cam = cam
        self.eye = eye
        self.rot = rot
        self.textures = textures
        st = self.style
        self.tex = st.texture_strength if textures else 0.0
        el, az = st.sun_elevation, st.sun_azimuth
        self.sun = np.array(
            [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], np.float32
        )
        zen = np.array(st.sky_zenith, np.float32)
        self.amb_col = (0.78 + 0.22 * zen / zen.mean()).astype(np.float32)
        self.sun_col = np.array(st.sun_color, np.float32)
        self.inv_f = 1.0 / cam.fx
        n = tables.normal
        self.amb = (st.ambient * (0.78 + 0.22 * n[:, 2])).astype(np.float32)
        self.dir = (st.sun_strength * np.clip(n @ self.sun, 0, None)).astype(np.float32)

    def light(self, g: _Pixels, alb: np.ndarray, direct=None, ambient=None) -> np.ndarray:
        a = self.amb[g.q] if ambient is None else ambient
        d = self.dir[g.q] if direct is None else direct
        if self.sunlit is not None:
            d = d * self.sunlit[g.pix]
            a = a * self.occl[g.pix]
        return alb * (a[:, None] * self.amb_col + d[:, None] * self.sun_col)

    # materials ---------------------------------------------------------------------------------

    def m_flat(self, g: _Pixels) -> np.ndarray:
        alb = g.col()
        if self.tex:
            s, t = g.st()
            n = _noise(1, s * 9 + g.q % 64, t * 9)
            alb = alb * (1 + 0.06 * self.tex * n)[:, None]
        return self.light(g, alb)

    def m_road(self, g: _Pixels) -> np.ndarray:
        x, y = g.px, g.py
        alb = g.col()
        if not self.tex:
            return self.light(g, alb)
        k = self.tex
        fp = g.footprint()
        fine = np.clip(1.5 - fp / 0.05, 0, 1)
        big = _noise(0, x * 1.2, y * 1.2)
        mid = _noise(3, x * 6, y * 6)
        grain = _noise(2, x * 40, y * 40) * fine
        shade = 1 + k * (0.09 * big + 0.06 * mid + 0.09 * grain)
        road = self.scene.road
        # Darker tyre tracks in each lane.
        lw = road.lane_width
        yl = np.abs(_wrap(y, lw) - lw / 2)
        shade -= k * 0.05 * np.clip(1 - np.abs(yl - 0.8) / 0.45, 0, 1)
        alb = alb * shade[:, None]
        paint = np.zeros(g.n, np.float32)
        for mk in road.markings:
            # Test the narrow extent first, then the rest on the few candidates only.
            if mk.y1 - mk.y0 < mk.x1 - mk.x0:
                cand = np.flatnonzero((y >= mk.y0) & (y <= mk.y1))
                cand = cand[(x[cand] >= mk.x0) & (x[cand] <= mk.x1)]
            else:
                cand = np.flatnonzero((x >= mk.x0) & (x <= mk.x1))
                cand = cand[(y[cand] >= mk.y0) & (y[cand] <= mk.y1)]
            if not len(cand):
                continue
            xc, yc = x[cand], y[cand]
            keep = np.ones(len(cand), bool)
            if mk.dash > 0:
                keep &= _wrap(xc - mk.x0, mk.dash + mk.gap) < mk.dash
            if mk.stripes_y > 0:
                keep &= _wrap(yc - mk.y0, mk.stripes_y) < 0.5 * mk.stripes_y
            cand = cand[keep]
            paint[cand] = np.maximum(paint[cand], mk.brightness)
        if paint.any():
            wear = np.clip(1 - 0.5 * k * np.abs(_noise(3, x * 3, y * 3)), 0.3, 1)
            p = (paint * wear)[:, None]
            alb = alb * (1 - p) + p * np.float32(0.92)
        if road.tram_y is not None:
            for off in (-0.7175, 0.7175):
                dy = np.abs(y - road.tram_y - off)
                rail = (dy < 0.035)[:, None]
                groove = ((dy >= 0.035) & (dy < 0.07))[:, None]
                alb = np.where(rail, np.float32(0.52), np.where(groove, alb * 0.45, alb))
        return self.light(g, alb)

    def m_paving(self, g: _Pixels) -> np.ndarray:
        x, y = g.px, g.py
        alb = g.col()
        if not self.tex:
            return self.light(g, alb)
        k = self.tex
        ts = 0.3 + 0.3 * (self.scene.seed % 3) / 2
        fx, fy = x / ts, y / ts
        fade = np.clip(2.0 - g.footprint() / (0.08 * ts), 0, 1)
        joint = (np.minimum(_wrap(fx, 1.0), _wrap(fy, 1.0)) < 0.07) * fade
        cell = _hash(np.floor(fx), np.floor(fy), 1.0) - 0.5
        shade = (
            1
            + k
            * (
                0.1 * cell * fade
                + 0.08 * _noise(0, x * 1.5, y * 1.5)
                + 0.05 * _noise(2, x * 30, y * 30) * fade
            )
            - 0.18 * joint
        )
        return self.light(g, alb * shade[:, None])

    def m_curb(self, g: _Pixels) -> np.ndarray:
        alb = g.col()
        if self.tex:
            shade = 1 + 0.08 * self.tex * _noise(2, g.px * 20, g.py * 20 + g.pz * 20)
            alb = alb * shade[:, None]
        return self.light(g, alb)

    def m_grass(self, g: _Pixels) -> np.ndarray:
        x, y = g.px, g.py
        alb = g.col()
        if not self.tex:
            return self.light(g, alb)
        k = self.tex
        fine = np.clip(1.5 - g.footprint() / 0.06, 0, 1)
        patch = _noise(0, x * 2, y * 2)
        dry = np.clip(_noise(3, x * 0.8 + 40, y * 0.8), 0, 1)[:, None]
        alb = alb * (1 + k * (0.18 * patch + 0.22 * _noise(2, x * 35, y * 35) * fine))[:, None]
        alb = alb * (1 - 0.5 * dry) + dry * 0.5 * np.array([0.42, 0.38, 0.24], np.float32)
        return self.light(g, alb)

    def m_ground(self, g: _Pixels) -> np.ndarray:
        alb = g.col()
        if self.tex:
            x, y = g.px, g.py
            fine = np.clip(1.5 - g.footprint() / 0.05, 0, 1)
            alb = (
                alb
                * (
                    1
                    + self.tex
                    * (0.1 * _noise(0, x * 2, y * 2) + 0.14 * fine * _noise(2, x * 40, y * 40))
                )[:, None]
            )
        return self.light(g, alb)

    def m_facade(self, g: _Pixels) -> np.ndarray:
        s, t = g.st()
        wall = g.col()
        if not self.tex:
            return self.light(g, wall)
        k = self.tex
        P = [g.par(i) for i in range(13)]
        storey, gfl, ww, wh, sp, sill, shop, band, off, texture, height, length, face = P
        fp = g.footprint()
        # Wall texture by style: plaster, brick courses, concrete panels, glass curtain wall.
        n = _noise(1, s * 2 + face * 31, t * 2)
        shade = 1 + k * (
            0.06 * n + 0.05 * _noise(2, s * 25, t * 25) * np.clip(1 - fp / 0.04, 0, 1)
        )
        brick = texture == 1
        if brick.any():
            row = np.floor(t / 0.075)
            bx = _wrap(s / 0.25 + 0.5 * _wrap(row, 2), 1.0)
            mortar = ((_wrap(t, 0.075) < 0.012) | (bx < 0.05)) & brick
            shade = np.where(mortar, shade * (1 + 0.3 * np.clip(1 - fp / 0.02, 0, 1)), shade)
            shade = shade * np.where(brick, 1 + 0.08 * (_hash(np.floor(s / 0.25), row) - 0.5), 1.0)
        panel = texture == 2
        if panel.any():
            pj = (_wrap(s, 2.6) < 0.04) | (_wrap(t, storey) < 0.04)
            shade = np.where(panel & pj, shade * 0.8, shade)
        # Dirt towards the ground, plinth.
        shade = shade * (1 - 0.12 * np.clip(1 - t / 3.0, 0, 1))
        shade = np.where(t < 0.5, shade * 0.82, shade)
        alb = wall * shade[:, None]
        # Storey bands and the top cornice.
        level_t = t - gfl
        level = np.floor(level_t / storey)
        lt = level_t - level * storey
        bandm = (band > 0) & (level_t > -0.05) & (lt < band)
        alb = np.where(bandm[:, None], alb * 1.12, alb)
        alb = np.where((t > height - 0.35)[:, None], alb * 0.85, alb)
        # Windows of the upper floors.
        sl = _wrap(s - off, sp)
        col_i = np.floor((s - off) / sp)
        in_face = (s > 0.6) & (s < length - 0.6)
        win = (
            in_face
            & (level_t > 0)
            & (t < height - 0.9)
            & (lt >= sill)
            & (lt < sill + wh)
            & (sl < ww)
        )
        frame_w = 0.07
        inner = (
            win
            & (lt >= sill + frame_w)
            & (lt < sill + wh - frame_w)
            & (sl >= frame_w)
            & (sl < ww - frame_w)
        )
        rnd = _hash(col_i, level, face + 1.0)
        glass = g.col(2) * (0.7 + 0.7 * rnd)[:, None]
        # Reflections of the sky: the upper part of many windows is brighter.
        refl = np.clip((lt - sill) / np.maximum(wh, 0.1), 0, 1) * (rnd > 0.45) * 0.22
        sky_ref = np.array(self.style.sky_horizon, np.float32)
        glass = glass * (1 - refl[:, None]) + refl[:, None] * sky_ref
        curtain = (rnd > 0.85)[:, None]
        glass = np.where(
            curtain, glass * 0.5 + 0.35 * np.array([0.9, 0.88, 0.8], np.float32), glass
        )
        # Ground floor: shop windows or doors.
        gf = (t < gfl - 0.3) & in_face
        shopm = gf & (shop > 0.5) & (t > 0.45) & (_wrap(s - off, 2 * sp) < 1.6 * sp)
        door_c = np.floor((s - off) / (3 * sp))
        door = (
            gf
            & (shop < 0.5)
            & (t < 2.3)
            & (_wrap(s - off, 3 * sp) < 1.2)
            & (_hash(door_c, door_c, face) > 0.4)
        )
        fade = np.clip(2.0 - fp / np.maximum(ww * 0.12, 0.02), 0, 1)[:, None]
        mean_w = np.clip(ww * wh / (sp * storey), 0, 0.8)[:, None] * ((level_t > 0)[:, None])
        far = alb * (1 - mean_w) + mean_w * g.col(2)
        pattern = np.where(inner[:, None], glass, np.where(win[:, None], g.col(3), alb))
        pattern = np.where(shopm[:, None], glass * 0.8 + 0.05, pattern)
        pattern = np.where(door[:, None], np.array([0.22, 0.16, 0.12], np.float32), pattern)
        alb = pattern * fade + far * (1 - fade)
        return self.light(g, alb)

    def m_roof(self, g: _Pixels) -> np.ndarray:
        alb = g.col()
        if self.tex:
            s, t = g.st()
            rows = _wrap(t / 0.3, 1.0) < 0.2
            fade = np.clip(2 - g.footprint() / 0.05, 0, 1)
            shade = 1 - 0.2 * rows * fade + 0.08 * self.tex * _noise(1, s * 3, t * 3)
            alb = alb * shade[:, None]
        return self.light(g, alb)

    def m_foliage(self, g: _Pixels) -> np.ndarray:
        s, t = g.st()
        R = g.par(0)
        x, y = s / R, t / R
        nz = np.sqrt(np.clip(1 - x * x - y * y, 0.0, 1.0))
        ndl = nz * g.par(1) + x * g.par(2) + y * g.par(3)
        alb = g.col()
        direct = self.style.sun_strength * np.clip(ndl, 0, None)
        ambient = self.style.ambient * (0.62 + 0.25 * y + 0.13 * nz)
        if self.tex:
            seed = g.par(4)
            leaf = _noise(3, s * 3.5 + seed, t * 3.5 - seed)
            fine = _noise(2, s * 14 + seed, t * 14) * np.clip(1.5 - g.footprint() / 0.07, 0, 1)
            clump = np.clip(0.5 + 0.9 * leaf + 0.35 * fine, 0, 1.2)
            alb = alb * (0.55 + 0.6 * clump)[:, None]
            direct = direct * np.clip(clump * 1.2, 0, 1)
        return self.light(g, alb, direct=direct, ambient=ambient)

    def m_hedge(self, g: _Pixels) -> np.ndarray:
        alb = g.col()
        if self.tex:
            s, t = g.st()
            n = _noise(3, s * 4 + g.px, t * 4) * 0.7 + 0.4 * _noise(2, s * 15, t * 15) * np.clip(
                1.5 - g.footprint() / 0.07, 0, 1
            )
            alb = alb * (0.9 + 0.4 * self.tex * n)[:, None]
        return self.light(g, alb)

    def _round(self, g: _Pixels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-pixel lighting of a camera-facing quad standing in for a vertical cylinder."""
        s, t = g.st()
        r = np.maximum(g.par(0), 1e-3)
        x = np.clip(s / r - 1.0, -1, 1)
        nz = np.sqrt(1 - x * x)
        direct = self.style.sun_strength * np.clip(nz * g.par(1) + x * g.par(2), 0, None)
        ambient = self.style.ambient * (0.7 + 0.3 * nz)
        return s, t, (direct, ambient)

    def m_metal(self, g: _Pixels) -> np.ndarray:
        s, t, (direct, ambient) = self._round(g)
        alb = g.col()
        if self.tex:
            alb = alb * (1 + 0.05 * self.tex * _noise(1, s * 5, t * 3))[:, None]
        return self.light(g, alb, direct=direct, ambient=ambient)

    def m_bark(self, g: _Pixels) -> np.ndarray:
        s, t, (direct, ambient) = self._round(g)
        alb = g.col()
        if self.tex:
            alb = alb * (1 + 0.25 * self.tex * _noise(2, s * 30, t * 4))[:, None]
        return self.light(g, alb, direct=direct, ambient=ambient)

    def m_glass(self, g: _Pixels) -> np.ndarray:
        s, t = g.st()
        alb = g.col()
        if self.tex:
            h = np.maximum(g.par(0), 0.1)
            r = (0.12 + 0.25 * np.clip(t / h, 0, 1))[:, None]
            alb = alb * (1 - r) + r * np.array(self.style.sky_horizon, np.float32) * 0.8
        out = self.light(g, alb)
        return out

    def m_paint(self, g: _Pixels) -> np.ndarray:
        alb = g.col()
        if self.tex:
            # Vertical faces of a car body: dark plastic bumper / sill strip at the bottom, a
            # brighter shoulder line at the top.
            s, t = g.st()
            h = g.par(0)
            vertical = (np.abs(np.take(self.tables.normal[:, 2], g.q)) < 0.5) & (h > 0)
            bumper = vertical & (t < 0.16)
            shoulder = vertical & (t > h - 0.07)
            alb = np.where(bumper[:, None], alb * 0.35 + 0.03, alb)
            alb = np.where(shoulder[:, None], alb * 1.15 + 0.03, alb)
        out = self.light(g, alb)
        if self.tex:
            # A little sky reflected in the clear coat, more on upward faces.
            nzz = np.take(self.tables.normal[:, 2], g.q)
            r = (0.05 + 0.12 * np.clip(nzz, 0, 1))[:, None]
            out = out * (1 - r) + r * np.array(self.style.sky_horizon, np.float32)
            out = out * (1 + 0.04 * self.tex * _noise(1, s * 6, t * 6))[:, None]
        return out

    def m_body(self, g: _Pixels) -> np.ndarray:
        s, t = g.st()
        t0, t1, period, pillar, m0, m1, length = (g.par(i) for i in range(7))
        win = (
            (t >= t0)
            & (t < t1)
            & (s >= m0)
            & (s < length - m1)
            & (_wrap(s - m0, period) >= pillar)
        )
        alb = np.where(win[:, None], g.col(2), g.col())
        if self.tex:
            r = (np.clip((t - t0) / np.maximum(t1 - t0, 0.1), 0, 1) * 0.25 * win)[:, None]
            alb = alb * (1 - r) + r * np.array(self.style.sky_horizon, np.float32)
            skirt = (t < 0.12)[:, None]
            alb = np.where(skirt, alb * 0.5, alb)
        return self.light(g, alb)

    def m_sign(self, g: _Pixels) -> np.ndarray:
        s, t = g.st()
        shape, r, hw, hh = (g.par(i) for i in range(4))
        rr = np.maximum(r, 1e-3)
        x, y = s / rr, t / rr
        ang_in = {
            1.0: (-np.pi / 2, np.pi / 6, 5 * np.pi / 6),
            3.0: tuple(np.pi / 4 + k * np.pi / 2 for k in range(4)),
            4.0: tuple(k * np.pi / 4 for k in range(8)),
        }
        metric = np.sqrt(x * x + y * y)
        for code, angles in ang_in.items():
            sel = shape == code
            if sel.any():
                apothem = {1.0: 0.5, 3.0: math.cos(math.pi / 4), 4.0: math.cos(math.pi / 8)}[code]
                m = np.max([x * math.cos(a) + y * math.sin(a) for a in angles], axis=0) / apothem
                metric = np.where(sel, m, metric)
        rect = shape == 2.0
        metric = np.where(
            rect,
            np.maximum(np.abs(x) / np.maximum(hw, 1e-3), np.abs(y) / np.maximum(hh, 1e-3)),
            metric,
        )
        border = metric > np.where(rect, 0.88, 0.76)
        alb = np.where(border[:, None], g.col(2), g.col())
        if self.tex:
            # A dark symbol in the middle of circle/triangle/rect signs.
            sym = (metric < 0.35) & (np.abs(x) < 0.25) & (shape != 4.0)
            alb = np.where(sym[:, None], alb * 0.25, alb)
        return self.light(g, alb) * 1.1  # retro-reflective

    def m_tlight(self, g: _Pixels) -> np.ndarray:
        s, t = g.st()
        w, h, state, n_lamps = (g.par(i) for i in range(4))
        alb = g.col()
        out = self.light(g, alb)
        cx = w / 2
        lamp_r = w * 0.3
        for k in range(3):
            cz = h * (1 - (k + 0.5) / np.maximum(n_lamps, 1))
            inside = ((s - cx) ** 2 + (t - cz) ** 2 < lamp_r**2) & (k < n_lamps)
            if not inside.any():
                continue
            ped = n_lamps < 2.5
            lit = np.where(
                ped,
                np.where(k == 0, state < 1.5, state > 1.5),
                ((k == 0) & ((state == 0) | (state == 3)))
                | ((k == 1) & ((state == 1) | (state == 3)))
                | ((k == 2) & (state == 2)),
            )
            on = np.array([[1.0, 0.15, 0.1], [1.0, 0.7, 0.1], [0.3, 1.0, 0.6]], np.float32)[
                np.where(ped, np.where(k == 0, 0, 2), k)
            ]
            lamp = np.where(lit[:, None], on, on * 0.15 + 0.05)
            out = np.where(inside[:, None], lamp, out)
        return out

    def m_fence(self, g: _Pixels) -> np.ndarray:
        s, t = g.st()
        h, style = g.par(0), g.par(1)
        alb = g.col()
        if not self.tex:
            return self.light(g, alb)
        bars = np.where(style == 1, _wrap(s, 0.15) < 0.12, _wrap(s, 0.13) < 0.035)
        mesh = (_wrap(s + t, 0.08) < 0.015) | (_wrap(s - t, 0.08) < 0.015)
        bars = np.where(style == 2, mesh, bars)
        rails = (np.abs(t - 0.12) < 0.04) | (np.abs(t - h + 0.06) < 0.04)
        solid = bars | rails
        fade = np.clip(2 - g.footprint() / 0.03, 0, 1)
        shade = np.where(solid, 1.0, 0.45) * fade + 0.7 * (1 - fade)
        return self.light(g, alb * shade[:, None])

    def m_wall(self, g: _Pixels) -> np.ndarray:
        alb = g.col()
        if self.tex:
            s, t = g.st()
            h = g.par(0)
            shade = 1 + self.tex * (
                0.08 * _noise(1, s * 3, t * 3) + 0.06 * _noise(2, s * 20, t * 20)
            )
            shade = np.where(t > h - 0.08, shade * 1.15, shade)
            alb = alb * shade[:, None]
        return self.light(g, alb)

    def m_tire(self, g: _Pixels) -> np.ndarray:
        alb = g.col()
        r = g.par(0)
        if (r > 0).any():
            s, t = g.st()
            rho = np.sqrt(s * s + t * t) / np.maximum(r, 1e-3)
            rim = (r > 0) & (rho < 0.58)
            alb = np.where(rim[:, None], np.float32(0.42), alb)
            alb = np.where((rim & (rho < 0.15))[:, None], np.float32(0.2), alb)
        return self.light(g, alb)

    def m_hood(self, g: _Pixels) -> np.ndarray:
        # The bonnet: paint lit from above with a gradient towards the camera.
        cam = self.cam
        v = (g.pix // cam.width).astype(np.float32) / cam.height
        alb = g.col() * (0.75 + 0.5 * (1 - v))[:, None]
        return alb * (self.style.ambient + 0.3 * self.style.sun_strength)

    def sky(self, pix: np.ndarray, rays: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        st = self.style
        rx, ry, rz = rays
        norm = np.sqrt(rx * rx + ry * ry + rz * rz)
        e = rz / norm
        w = np.clip(e, 0, 1) ** 0.55
        hor = np.array(st.sky_horizon, np.float32)
        zen = np.array(st.sky_zenith, np.float32)
        col = hor * (1 - w[:, None]) + zen * w[:, None]
        if self.tex:
            ez = np.maximum(e, 0.02)
            cu = (rx / norm) / ez * 0.35 + self.eye[0] * 0.0002
            cv = (ry / norm) / ez * 0.35 + self.eye[1] * 0.0002
            n = _noise(0, cu * 16, cv * 16) + 0.4 * _noise(3, cu * 50, cv * 50)
            thr = 0.55 - 1.0 * st.cloud_cover
            cloud = _smoothstep(thr, thr + 0.35, n) * np.clip((e - 0.015) * 12, 0, 1)
            cc = np.array(st.cloud_color, np.float32) * (0.8 + 0.2 * np.clip(n, 0, 1))[:, None]
            col = col * (1 - cloud[:, None]) + cc * cloud[:, None]
            if st.sun_strength > 0.2:
                cosang = (rx * self.sun[0] + ry * self.sun[1] + rz * self.sun[2]) / norm
                glow = st.sun_strength * 0.35 * np.exp((cosang - 1) * 25)
                col = col + glow[:, None] * np.array([1.0, 0.95, 0.85], np.float32)
        return col


_MATERIAL_FUNCS = {
    M_FLAT: 'm_flat',
    M_ROAD: 'm_road',
    M_PAVING: 'm_paving',
    M_CURB: 'm_curb',
    M_GRASS: 'm_grass',
    M_GROUND: 'm_ground',
    M_FACADE: 'm_facade',
    M_ROOF: 'm_roof',
    M_FOLIAGE: 'm_foliage',
    M_HEDGE: 'm_hedge',
    M_BARK: 'm_bark',
    M_METAL: 'm_metal',
    M_GLASS: 'm_glass',
    M_PAINT: 'm_paint',
    M_BODY: 'm_body',
    M_SIGN: 'm_sign',
    M_TLIGHT: 'm_tlight',
    M_FENCE: 'm_fence',
    M_WALL: 'm_wall',
    M_TIRE: 'm_tire',
    M_HOOD: 'm_hood',
}


# --------------------------------------------------------------------------------------------
# Public entry point


def _hood_polygon(scene: Scene, W: int, H: int) -> np.ndarray:
    hd = scene.hood
    us = np.linspace(-1.0, W, 33)
    xc = hd.centre_x * W
    half = max(xc, W - xc)
    k = ((us - xc) / half) ** 2
    ch = hd.centre_height * H
    heights = ch * (1 - (1 - hd.side_height) * k)
    top = np.stack([us, H - 0.5 - heights], axis=1)
    return np.vstack([[[W + 1.0, H + 1.0], [-1.0, H + 1.0]], top])


def render_frame(
    scene: Scene,
    frame: int,
    camera: CameraModel,
    rng_seed: int | None = None,
    *,
    effects: bool = True,
    return_depth: bool = False,
):
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
    W, H = int(cam.width), int(cam.height)
    if W < 1 or H < 1:
        raise ValueError(f'image size must be positive, got {W}x{H}')
    t = int(frame) / FPS
    eye, rot, yaw_c = _camera_pose(scene, cam, t)
    tan_h = max(cam.cx + 1, W - cam.cx) / cam.fx

    # 1. Meshing.
    ground = _Mesh(eye)
    for gp in scene.road.ground:
        if gp.kind == 'curb':
            ground.add(gp.verts, gp.label, M_CURB, gp.color)
        else:
            ground.add(
                gp.verts, gp.label, _GROUND_MATS[gp.kind], gp.color, normal=_UP.copy(), cull=False
            )
    objects = _emit_scene(scene, t, eye, yaw_c, tan_h)
    tables = _Tables([ground, objects], extra=1)
    hood_id = tables.count
    tables.label[hood_id] = EGO_VEHICLE
    tables.mat[hood_id] = M_HOOD
    tables.col[hood_id] = scene.hood.color
    tables.normal[hood_id] = _UP

    # 2. Rasterisation.
    gid, oid, zbuf = _rasterize(ground, objects, tables, eye, rot, cam)
    pid = np.where(oid >= 0, oid, gid)
    cv2.fillPoly(pid, [_fixed(_hood_polygon(scene, W, H))], hood_id, cv2.LINE_8, _SHIFT)
    labels = tables.label[pid]

    # 3. Deferred shading.
    flat = pid.ravel()
    pix = np.flatnonzero(flat >= 0)
    q = flat[pix]
    uu = (pix % W).astype(np.float32)
    vv = (pix // W).astype(np.float32)
    iz = zbuf.ravel()[pix]
    is_ground = q < len(ground)
    giz = tables.iz_a[q] * uu + tables.iz_b[q] * vv + tables.iz_c[q]
    iz = np.where(is_ground, giz, iz)
    iz = np.where(q == hood_id, np.float32(1.0), iz)
    z = 1.0 / np.maximum(iz, 1e-6)
    xn = (uu - cam.cx) / cam.fx
    yn = (vv - cam.cy) / cam.fy
    rt = rot.T.astype(np.float32)
    rx = rt[0, 0] * xn + rt[0, 1] * yn + rt[0, 2]
    ry = rt[1, 0] * xn + rt[1, 1] * yn + rt[1, 2]
    rz = rt[2, 0] * xn + rt[2, 1] * yn + rt[2, 2]

    shader = _Shader(scene, tables, cam, eye, rot, textures=effects)
    # The visible surface point of every non-sky pixel, in world coordinates.
    shader.pix, shader.q = pix, q
    shader.px = (eye[0] + z * rx).astype(np.float32)
    shader.py = (eye[1] + z * ry).astype(np.float32)
    shader.pz = (eye[2] + z * rz).astype(np.float32)
    shader.dist = (z * np.sqrt(rx * rx + ry * ry + rz * rz)).astype(np.float32)
    if effects:
        shader.sunlit, shader.occl = _shadow_masks(objects, gid, oid, eye, rot, cam, scene)

    rgb = np.zeros((H * W, 3), np.float32)
    mats = tables.mat[q]
    order = np.argsort(mats, kind='stable')
    counts = np.bincount(mats, minlength=N_MAT)
    start = 0
    for m in range(N_MAT):
        n = int(counts[m])
        if n == 0:
            continue
        sel = order[start : start + n]
        start += n
        g = _Pixels(shader, sel)
        rgb[g.pix] = getattr(shader, _MATERIAL_FUNCS[m])(g)
    sky = np.flatnonzero(flat < 0)
    if len(sky):
        su = (sky % W).astype(np.float32)
        sv = (sky // W).astype(np.float32)
        sxn = (su - cam.cx) / cam.fx
        syn = (sv - cam.cy) / cam.fy
        rays = tuple(rt[k, 0] * sxn + rt[k, 1] * syn + rt[k, 2] for k in range(3))
        rgb[sky] = shader.sky(sky, rays)

    # 4. Image effects.
    if effects:
        dist = np.full(H * W, np.inf, np.float32)
        dist[pix] = np.where(q == hood_id, np.float32(np.inf), shader.dist)
        out = _effects(rgb.reshape(H, W, 3), dist.reshape(H, W), labels, scene, frame, rng_seed)
    else:
        out = np.clip(rgb.reshape(H, W, 3) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if return_depth:
        depth = np.full(H * W, np.inf, np.float32)
        depth[pix] = shader.dist
        depth[pix[q == hood_id]] = np.inf
        return out, labels, depth.reshape(H, W)
    return out, labels


class _Soup:
    """Bare polygons (no attributes) for :func:`_project_mesh`."""

    def __init__(self, verts: list[np.ndarray]) -> None:
        self.verts = verts
        self.holes: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.verts)


def _shadow_masks(objects: _Mesh, gid, oid, eye, rot, cam: CameraModel, scene: Scene):
    """Per-pixel sun visibility and ambient occlusion on the ground (1 = lit)."""
    W, H = cam.width, cam.height
    sunlit = np.ones(H * W, np.float32)
    occl = np.ones(H * W, np.float32)
    ground_px = (oid < 0) & (gid >= 0)
    sigma = max(0.6, 1.2 * W / 1024)
    for polys, arr, strength in ((objects.shadows, sunlit, 0.85), (objects.contact, occl, 0.45)):
        if not polys or (arr is sunlit and scene.style.sun_strength <= 0.05):
            continue
        soup = _Soup([np.c_[p, np.zeros(len(p))] for p in polys])
        mask = np.zeros((H, W), np.uint8)
        for _, fixed, _, _, _ in _project_mesh(soup, eye, rot, cam):
            cv2.fillPoly(mask, fixed, 255, cv2.LINE_8, _SHIFT)
        m = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), sigma)
        m = np.where(ground_px, m, 0.0)
        arr[:] = (1.0 - strength * m).ravel()
    return sunlit, occl


def _effects(
    rgb: np.ndarray,
    dist: np.ndarray,
    labels: np.ndarray,
    scene: Scene,
    frame: int,
    rng_seed: int | None,
) -> np.ndarray:
    """Image-only effects on a float RGB image; returns uint8."""
    st = scene.style
    H, W = labels.shape
    # Haze towards the horizon colour with distance (sky and bonnet have dist = inf).
    h = 1.0 - np.exp(-dist / np.float32(st.haze_distance))
    h[~np.isfinite(dist)] = 0.0
    haze = np.empty_like(rgb)
    haze[:] = np.array(st.haze_color, np.float32)
    rgb = cv2.blendLinear(rgb, haze, 1.0 - h, h)
    # The bonnet mirrors the scene above it, blurred.
    hood = labels == EGO_VEHICLE
    if scene.hood.reflect > 0 and hood[-1].any():
        top = int(np.flatnonzero(hood.any(axis=1)).min())
        n = H - top
        if 0 < n <= top:
            k = max(1, int(W / 100)) * 2 + 1
            refl = cv2.GaussianBlur(np.ascontiguousarray(rgb[top - n : top][::-1]), (k, k), 0)
            r = np.float32(scene.hood.reflect)
            band = rgb[top:]
            np.copyto(band, band * (1 - r) + refl * (r * 0.6), where=hood[top:, :, None])
    # Camera response as one affine colour transform: exposure, white balance, saturation and
    # contrast around mid grey.
    s = st.saturation
    sat = s * np.eye(3) + (1 - s) / 3.0 * np.ones((3, 3))
    m = st.contrast * sat @ np.diag(st.exposure * np.array(st.white_balance))
    off = 0.45 * (1 - st.contrast)
    rgb = cv2.transform(rgb, np.c_[m, np.full(3, off)].astype(np.float32))
    rgb *= _vignette(W, H, float(st.vignetting))[..., None]
    # Optics blur and sensor noise (signal dependent, partly correlated across channels).
    sigma = st.blur_sigma * W / 1024
    if sigma >= 0.25:
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigma)
    seed = rng_seed if rng_seed is not None else (scene.seed * 1000003 + 7919 * int(frame) + 1)
    rng = np.random.default_rng(seed)
    # Gaussian noise through a 256-entry inverse-CDF table: ~5x cheaper than standard_normal.
    noise = np.take(_normal_table(), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    noise += noise[..., 1:2]  # luma-like common component
    rgb += noise * (np.float32(st.noise_sigma * 0.6) * (rgb + np.float32(0.15)))
    out = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(out, _gamma_lut(round(float(st.gamma), 3)))


@functools.lru_cache(maxsize=1)
def _normal_table() -> np.ndarray:
    return np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)


@functools.lru_cache(maxsize=8)
def _vignette(W: int, H: int, strength: float) -> np.ndarray:
    yy = (np.arange(H, dtype=np.float32) - H / 2) / (H / 2)
    xx = (np.arange(W, dtype=np.float32) - W / 2) / (W / 2)
    r2 = (xx[None, :] ** 2) * 0.6 + (yy[:, None] ** 2) * 0.4
    return (1 - strength * 0.5 * r2).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _gamma_lut(gamma: float) -> np.ndarray:
    return np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)


def label_histogram(label_maps: Iterable[np.ndarray]) -> dict[int, float]:
    """Fraction of pixels per Cityscapes label id over a collection of label maps."""
    counts = np.zeros(256, np.int64)
    for lm in label_maps:
        counts += np.bincount(np.asarray(lm, np.uint8).ravel(), minlength=256)
    total = counts.sum()
    if total == 0:
        return {}
    return {int(i): float(counts[i] / total) for i in np.flatnonzero(counts)}
