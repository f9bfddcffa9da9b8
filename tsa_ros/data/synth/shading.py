"""Deferred shading: materials, procedural textures, lighting and the sky, per pixel.

Stage 3 of :func:`~tsa_ros.data.synth.render.render_frame`. Per pixel, the polygon id gives
the label and the surface; the 3D point is recovered from the depth, so materials (asphalt,
paving, facades with windows, foliage, signs ...) are evaluated in world or surface
coordinates and stay glued to the world as the camera moves. Each material is a
``Shader.m_*`` method that shades all pixels of that material at once; textures are
tileable noise tiles fixed for the whole data set plus integer-cell hashes.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import cv2
import numpy as np

from tsa_ros.data.camera import CameraModel
from tsa_ros.data.synth.mesh import (
    M_BARK,
    M_BODY,
    M_CURB,
    M_FACADE,
    M_FENCE,
    M_FLAT,
    M_FOLIAGE,
    M_GLASS,
    M_GRASS,
    M_GROUND,
    M_HEDGE,
    M_HOOD,
    M_METAL,
    M_PAINT,
    M_PAVING,
    M_ROAD,
    M_ROOF,
    M_SIGN,
    M_TIRE,
    M_TLIGHT,
    M_WALL,
    N_MAT,
)
from tsa_ros.data.synth.raster import PolygonTables
from tsa_ros.data.synth.scene import Scene

# --------------------------------------------------------------------------------------------
# Textures


@functools.lru_cache(maxsize=1)
def _tiles() -> np.ndarray:
    """Four 256x256 tileable noise textures in [-1, 1], fixed for the whole data set."""
    size = 256
    rng = np.random.default_rng(0x5EED)
    freq_x = np.fft.fftfreq(size)[:, None]
    freq_y = np.fft.fftfreq(size)[None, :]
    freq = np.sqrt(freq_x**2 + freq_y**2)
    freq[0, 0] = 1.0
    out = []
    for beta, lo, hi in ((3.0, 0.0, 0.06), (2.0, 0.0, 0.2), (1.0, 0.05, 0.5), (2.5, 0.01, 0.12)):
        spec = np.fft.fft2(rng.standard_normal((size, size)))
        amp = freq ** (-beta / 2) * ((freq >= lo) & (freq <= hi))
        amp[0, 0] = 0.0
        img = np.real(np.fft.ifft2(spec * amp))
        img = (img - img.mean()) / (img.std() + 1e-9)
        out.append(np.clip(img / 2.5, -1, 1))
    return np.stack(out).astype(np.float32)


def _noise(tile: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample noise tile ``tile`` (bilinear, wrapping) at texel coordinates u, v (1-D arrays)."""
    count = u.size
    if count == 0:
        return np.zeros(0, np.float32)
    cols = 1024
    rows = -(-count // cols)
    map_u = np.zeros(rows * cols, np.float32)
    map_v = np.zeros(rows * cols, np.float32)
    map_u[:count] = _wrap(u, 256.0)
    map_v[:count] = _wrap(v, 256.0)
    out = cv2.remap(
        _tiles()[tile],
        map_u.reshape(rows, cols),
        map_v.reshape(rows, cols),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_WRAP,
    )
    return out.ravel()[:count]


def _wrap(x: np.ndarray, period: float | np.ndarray) -> np.ndarray:
    """x modulo period in [0, period) (much faster than np.mod on float arrays)."""
    return x - period * np.floor(x / period)


def _hash(i: np.ndarray, j: np.ndarray, seed: float | np.ndarray = 0.0) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer cell (i, j)."""
    salt = np.asarray(np.asarray(seed) * 83492791, dtype=np.int64)
    mixed = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ salt
    mixed = (mixed ^ (mixed >> 13)) * 1274126177
    return ((mixed ^ (mixed >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """0 below ``e0``, 1 above ``e1``, a cubic Hermite ramp between."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


# --------------------------------------------------------------------------------------------
# Deferred shading


class Pixels:
    """The pixels of one material: image indices, polygon ids and their 3D points."""

    def __init__(self, shader: Shader, sel: np.ndarray) -> None:
        self.shader = shader
        self.pix = shader.pix[sel]
        self.poly_id = shader.poly_id[sel]
        self.px, self.py, self.pz = shader.px[sel], shader.py[sel], shader.pz[sel]
        self.dist = shader.dist[sel]
        self.n = len(self.pix)

    def st(self) -> tuple[np.ndarray, np.ndarray]:
        """Surface coordinates (metres) along the polygon's e_s / e_t axes."""
        tables, poly_id = self.shader.tables, self.poly_id
        origin = np.take(tables.origin, poly_id, axis=0)
        es, et = np.take(tables.es, poly_id, axis=0), np.take(tables.et, poly_id, axis=0)
        dx, dy, dz = self.px - origin[:, 0], self.py - origin[:, 1], self.pz - origin[:, 2]
        s = dx * es[:, 0] + dy * es[:, 1] + dz * es[:, 2]
        t = dx * et[:, 0] + dy * et[:, 1] + dz * et[:, 2]
        return s, t

    def par(self, index: int) -> np.ndarray:
        """Material parameter ``index`` of each pixel's polygon."""
        return np.take(self.shader.tables.params[:, index], self.poly_id)

    def col(self, which: int = 1) -> np.ndarray:
        """Colour 1, 2 or 3 of each pixel's polygon."""
        tables = self.shader.tables
        return np.take((tables.col, tables.col2, tables.col3)[which - 1], self.poly_id, axis=0)

    def footprint(self) -> np.ndarray:
        """Approximate size in metres of one pixel on the surface (for texture fading)."""
        return self.dist * self.shader.inv_f


class Shader:
    """Materials and lighting of the deferred pass.

    :func:`shade_frame` fills in the per-pixel arrays (``pix``: flat image index,
    ``poly_id``: polygon id, ``px/py/pz``: world point, ``dist``: distance to the camera) and,
    with effects on, the ground's ``sunlit`` / ``occl`` (ambient occlusion) factors.
    """

    def __init__(
        self,
        scene: Scene,
        tables: PolygonTables,
        cam: CameraModel,
        eye: np.ndarray,
        rot: np.ndarray,
        textures: bool,
    ) -> None:
        self.pix = self.poly_id = self.px = self.py = self.pz = self.dist = None
        self.sunlit = self.occl = None
        self.scene = scene
        self.style = scene.style
        self.tables = tables
        self.cam = cam
        self.eye = eye
        self.rot = rot
        self.textures = textures
        style = self.style
        self.tex = style.texture_strength if textures else 0.0
        elevation, azimuth = style.sun_elevation, style.sun_azimuth
        self.sun = np.array(
            [
                math.cos(elevation) * math.cos(azimuth),
                math.cos(elevation) * math.sin(azimuth),
                math.sin(elevation),
            ],
            np.float32,
        )
        zenith = np.array(style.sky_zenith, np.float32)
        self.amb_col = (0.78 + 0.22 * zenith / zenith.mean()).astype(np.float32)
        self.sun_col = np.array(style.sun_color, np.float32)
        self.inv_f = 1.0 / cam.fx
        normals = tables.normal
        self.amb = (style.ambient * (0.78 + 0.22 * normals[:, 2])).astype(np.float32)
        self.dir = (style.sun_strength * np.clip(normals @ self.sun, 0, None)).astype(np.float32)

    def light(
        self,
        pixels: Pixels,
        albedo: np.ndarray,
        direct: np.ndarray | None = None,
        ambient: np.ndarray | None = None,
    ) -> np.ndarray:
        """Albedo lit by the sky (ambient) and the sun (direct), per-polygon unless given."""
        ambient_w = self.amb[pixels.poly_id] if ambient is None else ambient
        direct_w = self.dir[pixels.poly_id] if direct is None else direct
        if self.sunlit is not None:
            direct_w = direct_w * self.sunlit[pixels.pix]
            ambient_w = ambient_w * self.occl[pixels.pix]
        return albedo * (ambient_w[:, None] * self.amb_col + direct_w[:, None] * self.sun_col)

    # materials ---------------------------------------------------------------------------------

    def m_flat(self, pixels: Pixels) -> np.ndarray:
        albedo = pixels.col()
        if self.tex:
            s, t = pixels.st()
            grain = _noise(1, s * 9 + pixels.poly_id % 64, t * 9)
            albedo = albedo * (1 + 0.06 * self.tex * grain)[:, None]
        return self.light(pixels, albedo)

    def m_road(self, pixels: Pixels) -> np.ndarray:
        x, y = pixels.px, pixels.py
        albedo = pixels.col()
        if not self.tex:
            return self.light(pixels, albedo)
        tex = self.tex
        footprint = pixels.footprint()
        fine = np.clip(1.5 - footprint / 0.05, 0, 1)
        big = _noise(0, x * 1.2, y * 1.2)
        mid = _noise(3, x * 6, y * 6)
        grain = _noise(2, x * 40, y * 40) * fine
        shade = 1 + tex * (0.09 * big + 0.06 * mid + 0.09 * grain)
        road = self.scene.road
        # Darker tyre tracks in each lane.
        lane_w = road.lane_width
        y_in_lane = np.abs(_wrap(y, lane_w) - lane_w / 2)
        shade -= tex * 0.05 * np.clip(1 - np.abs(y_in_lane - 0.8) / 0.45, 0, 1)
        albedo = albedo * shade[:, None]
        paint = np.zeros(pixels.n, np.float32)
        for marking in road.markings:
            # Test the narrow extent first, then the rest on the few candidates only.
            if marking.y1 - marking.y0 < marking.x1 - marking.x0:
                cand = np.flatnonzero((y >= marking.y0) & (y <= marking.y1))
                cand = cand[(x[cand] >= marking.x0) & (x[cand] <= marking.x1)]
            else:
                cand = np.flatnonzero((x >= marking.x0) & (x <= marking.x1))
                cand = cand[(y[cand] >= marking.y0) & (y[cand] <= marking.y1)]
            if not len(cand):
                continue
            cand_x, cand_y = x[cand], y[cand]
            keep = np.ones(len(cand), bool)
            if marking.dash > 0:
                keep &= _wrap(cand_x - marking.x0, marking.dash + marking.gap) < marking.dash
            if marking.stripes_y > 0:
                keep &= _wrap(cand_y - marking.y0, marking.stripes_y) < 0.5 * marking.stripes_y
            cand = cand[keep]
            paint[cand] = np.maximum(paint[cand], marking.brightness)
        if paint.any():
            wear = np.clip(1 - 0.5 * tex * np.abs(_noise(3, x * 3, y * 3)), 0.3, 1)
            paint_w = (paint * wear)[:, None]
            albedo = albedo * (1 - paint_w) + paint_w * np.float32(0.92)
        if road.tram_y is not None:
            for rail_off in (-0.7175, 0.7175):
                dy = np.abs(y - road.tram_y - rail_off)
                rail = (dy < 0.035)[:, None]
                groove = ((dy >= 0.035) & (dy < 0.07))[:, None]
                albedo = np.where(rail, np.float32(0.52), np.where(groove, albedo * 0.45, albedo))
        return self.light(pixels, albedo)

    def m_paving(self, pixels: Pixels) -> np.ndarray:
        x, y = pixels.px, pixels.py
        albedo = pixels.col()
        if not self.tex:
            return self.light(pixels, albedo)
        tex = self.tex
        tile = 0.3 + 0.3 * (self.scene.seed % 3) / 2
        tile_x, tile_y = x / tile, y / tile
        fade = np.clip(2.0 - pixels.footprint() / (0.08 * tile), 0, 1)
        joint = (np.minimum(_wrap(tile_x, 1.0), _wrap(tile_y, 1.0)) < 0.07) * fade
        cell = _hash(np.floor(tile_x), np.floor(tile_y), 1.0) - 0.5
        shade = (
            1
            + tex
            * (
                0.1 * cell * fade
                + 0.08 * _noise(0, x * 1.5, y * 1.5)
                + 0.05 * _noise(2, x * 30, y * 30) * fade
            )
            - 0.18 * joint
        )
        return self.light(pixels, albedo * shade[:, None])

    def m_curb(self, pixels: Pixels) -> np.ndarray:
        albedo = pixels.col()
        if self.tex:
            shade = 1 + 0.08 * self.tex * _noise(
                2, pixels.px * 20, pixels.py * 20 + pixels.pz * 20
            )
            albedo = albedo * shade[:, None]
        return self.light(pixels, albedo)

    def m_grass(self, pixels: Pixels) -> np.ndarray:
        x, y = pixels.px, pixels.py
        albedo = pixels.col()
        if not self.tex:
            return self.light(pixels, albedo)
        tex = self.tex
        fine = np.clip(1.5 - pixels.footprint() / 0.06, 0, 1)
        patch = _noise(0, x * 2, y * 2)
        dry = np.clip(_noise(3, x * 0.8 + 40, y * 0.8), 0, 1)[:, None]
        albedo = (
            albedo * (1 + tex * (0.18 * patch + 0.22 * _noise(2, x * 35, y * 35) * fine))[:, None]
        )
        albedo = albedo * (1 - 0.5 * dry) + dry * 0.5 * np.array([0.42, 0.38, 0.24], np.float32)
        return self.light(pixels, albedo)

    def m_ground(self, pixels: Pixels) -> np.ndarray:
        albedo = pixels.col()
        if self.tex:
            x, y = pixels.px, pixels.py
            fine = np.clip(1.5 - pixels.footprint() / 0.05, 0, 1)
            albedo = (
                albedo
                * (
                    1
                    + self.tex
                    * (0.1 * _noise(0, x * 2, y * 2) + 0.14 * fine * _noise(2, x * 40, y * 40))
                )[:, None]
            )
        return self.light(pixels, albedo)

    def m_facade(self, pixels: Pixels) -> np.ndarray:
        s, t = pixels.st()
        wall = pixels.col()
        if not self.tex:
            return self.light(pixels, wall)
        tex = self.tex
        params = [pixels.par(i) for i in range(13)]
        (
            storey,
            ground_floor,
            win_w,
            win_h,
            spacing,
            sill,
            shop,
            band,
            offset,
            texture,
            height,
            length,
            face,
        ) = params
        footprint = pixels.footprint()
        # Wall texture by style: plaster, brick courses, concrete panels, glass curtain wall.
        plaster = _noise(1, s * 2 + face * 31, t * 2)
        shade = 1 + tex * (
            0.06 * plaster + 0.05 * _noise(2, s * 25, t * 25) * np.clip(1 - footprint / 0.04, 0, 1)
        )
        brick = texture == 1
        if brick.any():
            row = np.floor(t / 0.075)
            brick_x = _wrap(s / 0.25 + 0.5 * _wrap(row, 2), 1.0)
            mortar = ((_wrap(t, 0.075) < 0.012) | (brick_x < 0.05)) & brick
            shade = np.where(
                mortar, shade * (1 + 0.3 * np.clip(1 - footprint / 0.02, 0, 1)), shade
            )
            shade = shade * np.where(brick, 1 + 0.08 * (_hash(np.floor(s / 0.25), row) - 0.5), 1.0)
        panel = texture == 2
        if panel.any():
            panel_joint = (_wrap(s, 2.6) < 0.04) | (_wrap(t, storey) < 0.04)
            shade = np.where(panel & panel_joint, shade * 0.8, shade)
        # Dirt towards the ground, plinth.
        shade = shade * (1 - 0.12 * np.clip(1 - t / 3.0, 0, 1))
        shade = np.where(t < 0.5, shade * 0.82, shade)
        albedo = wall * shade[:, None]
        # Storey bands and the top cornice.
        level_t = t - ground_floor
        level = np.floor(level_t / storey)
        t_in_storey = level_t - level * storey
        band_mask = (band > 0) & (level_t > -0.05) & (t_in_storey < band)
        albedo = np.where(band_mask[:, None], albedo * 1.12, albedo)
        albedo = np.where((t > height - 0.35)[:, None], albedo * 0.85, albedo)
        # Windows of the upper floors.
        s_in_bay = _wrap(s - offset, spacing)
        bay = np.floor((s - offset) / spacing)
        in_face = (s > 0.6) & (s < length - 0.6)
        win = (
            in_face
            & (level_t > 0)
            & (t < height - 0.9)
            & (t_in_storey >= sill)
            & (t_in_storey < sill + win_h)
            & (s_in_bay < win_w)
        )
        frame_w = 0.07
        inner = (
            win
            & (t_in_storey >= sill + frame_w)
            & (t_in_storey < sill + win_h - frame_w)
            & (s_in_bay >= frame_w)
            & (s_in_bay < win_w - frame_w)
        )
        rand = _hash(bay, level, face + 1.0)
        glass = pixels.col(2) * (0.7 + 0.7 * rand)[:, None]
        # Reflections of the sky: the upper part of many windows is brighter.
        refl = np.clip((t_in_storey - sill) / np.maximum(win_h, 0.1), 0, 1) * (rand > 0.45) * 0.22
        sky_ref = np.array(self.style.sky_horizon, np.float32)
        glass = glass * (1 - refl[:, None]) + refl[:, None] * sky_ref
        curtain = (rand > 0.85)[:, None]
        glass = np.where(
            curtain, glass * 0.5 + 0.35 * np.array([0.9, 0.88, 0.8], np.float32), glass
        )
        # Ground floor: shop windows or doors.
        ground_fl = (t < ground_floor - 0.3) & in_face
        shop_window = (
            ground_fl
            & (shop > 0.5)
            & (t > 0.45)
            & (_wrap(s - offset, 2 * spacing) < 1.6 * spacing)
        )
        door_c = np.floor((s - offset) / (3 * spacing))
        door = (
            ground_fl
            & (shop < 0.5)
            & (t < 2.3)
            & (_wrap(s - offset, 3 * spacing) < 1.2)
            & (_hash(door_c, door_c, face) > 0.4)
        )
        fade = np.clip(2.0 - footprint / np.maximum(win_w * 0.12, 0.02), 0, 1)[:, None]
        mean_w = (
            np.clip(win_w * win_h / (spacing * storey), 0, 0.8)[:, None] * ((level_t > 0)[:, None])
        )
        far = albedo * (1 - mean_w) + mean_w * pixels.col(2)
        pattern = np.where(inner[:, None], glass, np.where(win[:, None], pixels.col(3), albedo))
        pattern = np.where(shop_window[:, None], glass * 0.8 + 0.05, pattern)
        pattern = np.where(door[:, None], np.array([0.22, 0.16, 0.12], np.float32), pattern)
        albedo = pattern * fade + far * (1 - fade)
        return self.light(pixels, albedo)

    def m_roof(self, pixels: Pixels) -> np.ndarray:
        albedo = pixels.col()
        if self.tex:
            s, t = pixels.st()
            rows = _wrap(t / 0.3, 1.0) < 0.2
            fade = np.clip(2 - pixels.footprint() / 0.05, 0, 1)
            shade = 1 - 0.2 * rows * fade + 0.08 * self.tex * _noise(1, s * 3, t * 3)
            albedo = albedo * shade[:, None]
        return self.light(pixels, albedo)

    def m_foliage(self, pixels: Pixels) -> np.ndarray:
        s, t = pixels.st()
        radius = pixels.par(0)
        disc_x, disc_y = s / radius, t / radius
        normal_z = np.sqrt(np.clip(1 - disc_x * disc_x - disc_y * disc_y, 0.0, 1.0))
        n_dot_l = normal_z * pixels.par(1) + disc_x * pixels.par(2) + disc_y * pixels.par(3)
        albedo = pixels.col()
        direct = self.style.sun_strength * np.clip(n_dot_l, 0, None)
        ambient = self.style.ambient * (0.62 + 0.25 * disc_y + 0.13 * normal_z)
        if self.tex:
            seed = pixels.par(4)
            leaf = _noise(3, s * 3.5 + seed, t * 3.5 - seed)
            fine = _noise(2, s * 14 + seed, t * 14) * np.clip(
                1.5 - pixels.footprint() / 0.07, 0, 1
            )
            clump = np.clip(0.5 + 0.9 * leaf + 0.35 * fine, 0, 1.2)
            albedo = albedo * (0.55 + 0.6 * clump)[:, None]
            direct = direct * np.clip(clump * 1.2, 0, 1)
        return self.light(pixels, albedo, direct=direct, ambient=ambient)

    def m_hedge(self, pixels: Pixels) -> np.ndarray:
        albedo = pixels.col()
        if self.tex:
            s, t = pixels.st()
            leaves = _noise(3, s * 4 + pixels.px, t * 4) * 0.7 + 0.4 * _noise(
                2, s * 15, t * 15
            ) * np.clip(1.5 - pixels.footprint() / 0.07, 0, 1)
            albedo = albedo * (0.9 + 0.4 * self.tex * leaves)[:, None]
        return self.light(pixels, albedo)

    def _round(
        self, pixels: Pixels
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Per-pixel lighting of a camera-facing quad standing in for a vertical cylinder."""
        s, t = pixels.st()
        radius = np.maximum(pixels.par(0), 1e-3)
        across = np.clip(s / radius - 1.0, -1, 1)
        normal_z = np.sqrt(1 - across * across)
        direct = self.style.sun_strength * np.clip(
            normal_z * pixels.par(1) + across * pixels.par(2), 0, None
        )
        ambient = self.style.ambient * (0.7 + 0.3 * normal_z)
        return s, t, (direct, ambient)

    def m_metal(self, pixels: Pixels) -> np.ndarray:
        s, t, (direct, ambient) = self._round(pixels)
        albedo = pixels.col()
        if self.tex:
            albedo = albedo * (1 + 0.05 * self.tex * _noise(1, s * 5, t * 3))[:, None]
        return self.light(pixels, albedo, direct=direct, ambient=ambient)

    def m_bark(self, pixels: Pixels) -> np.ndarray:
        s, t, (direct, ambient) = self._round(pixels)
        albedo = pixels.col()
        if self.tex:
            albedo = albedo * (1 + 0.25 * self.tex * _noise(2, s * 30, t * 4))[:, None]
        return self.light(pixels, albedo, direct=direct, ambient=ambient)

    def m_glass(self, pixels: Pixels) -> np.ndarray:
        s, t = pixels.st()
        albedo = pixels.col()
        if self.tex:
            height = np.maximum(pixels.par(0), 0.1)
            reflect = (0.12 + 0.25 * np.clip(t / height, 0, 1))[:, None]
            albedo = (
                albedo * (1 - reflect)
                + reflect * np.array(self.style.sky_horizon, np.float32) * 0.8
            )
        out = self.light(pixels, albedo)
        return out

    def m_paint(self, pixels: Pixels) -> np.ndarray:
        albedo = pixels.col()
        if self.tex:
            # Vertical faces of a car body: dark plastic bumper / sill strip at the bottom, a
            # brighter shoulder line at the top.
            s, t = pixels.st()
            body_h = pixels.par(0)
            vertical = (np.abs(np.take(self.tables.normal[:, 2], pixels.poly_id)) < 0.5) & (
                body_h > 0
            )
            bumper = vertical & (t < 0.16)
            shoulder = vertical & (t > body_h - 0.07)
            albedo = np.where(bumper[:, None], albedo * 0.35 + 0.03, albedo)
            albedo = np.where(shoulder[:, None], albedo * 1.15 + 0.03, albedo)
        out = self.light(pixels, albedo)
        if self.tex:
            # A little sky reflected in the clear coat, more on upward faces.
            normal_z = np.take(self.tables.normal[:, 2], pixels.poly_id)
            reflect = (0.05 + 0.12 * np.clip(normal_z, 0, 1))[:, None]
            out = out * (1 - reflect) + reflect * np.array(self.style.sky_horizon, np.float32)
            out = out * (1 + 0.04 * self.tex * _noise(1, s * 6, t * 6))[:, None]
        return out

    def m_body(self, pixels: Pixels) -> np.ndarray:
        s, t = pixels.st()
        win_t0, win_t1, period, pillar, margin0, margin1, length = (
            pixels.par(i) for i in range(7)
        )
        win = (
            (t >= win_t0)
            & (t < win_t1)
            & (s >= margin0)
            & (s < length - margin1)
            & (_wrap(s - margin0, period) >= pillar)
        )
        albedo = np.where(win[:, None], pixels.col(2), pixels.col())
        if self.tex:
            reflect = (
                np.clip((t - win_t0) / np.maximum(win_t1 - win_t0, 0.1), 0, 1) * 0.25 * win
            )[:, None]
            albedo = albedo * (1 - reflect) + reflect * np.array(
                self.style.sky_horizon, np.float32
            )
            skirt = (t < 0.12)[:, None]
            albedo = np.where(skirt, albedo * 0.5, albedo)
        return self.light(pixels, albedo)

    def m_sign(self, pixels: Pixels) -> np.ndarray:
        s, t = pixels.st()
        shape, radius, half_w, half_h = (pixels.par(i) for i in range(4))
        safe_r = np.maximum(radius, 1e-3)
        x, y = s / safe_r, t / safe_r
        edge_normals = {
            1.0: (-np.pi / 2, np.pi / 6, 5 * np.pi / 6),
            3.0: tuple(np.pi / 4 + corner * np.pi / 2 for corner in range(4)),
            4.0: tuple(corner * np.pi / 4 for corner in range(8)),
        }
        metric = np.sqrt(x * x + y * y)
        for code, angles in edge_normals.items():
            sel = shape == code
            if sel.any():
                apothem = {1.0: 0.5, 3.0: math.cos(math.pi / 4), 4.0: math.cos(math.pi / 8)}[code]
                poly_metric = (
                    np.max(
                        [
                            x * math.cos(normal_angle) + y * math.sin(normal_angle)
                            for normal_angle in angles
                        ],
                        axis=0,
                    )
                    / apothem
                )
                metric = np.where(sel, poly_metric, metric)
        rect = shape == 2.0
        metric = np.where(
            rect,
            np.maximum(np.abs(x) / np.maximum(half_w, 1e-3), np.abs(y) / np.maximum(half_h, 1e-3)),
            metric,
        )
        border = metric > np.where(rect, 0.88, 0.76)
        albedo = np.where(border[:, None], pixels.col(2), pixels.col())
        if self.tex:
            # A dark symbol in the middle of circle/triangle/rect signs.
            sym = (metric < 0.35) & (np.abs(x) < 0.25) & (shape != 4.0)
            albedo = np.where(sym[:, None], albedo * 0.25, albedo)
        return self.light(pixels, albedo) * 1.1  # retro-reflective

    def m_tlight(self, pixels: Pixels) -> np.ndarray:
        s, t = pixels.st()
        box_w, box_h, state, n_lamps = (pixels.par(i) for i in range(4))
        albedo = pixels.col()
        out = self.light(pixels, albedo)
        lamp_s = box_w / 2
        lamp_r = box_w * 0.3
        for slot in range(3):
            lamp_t = box_h * (1 - (slot + 0.5) / np.maximum(n_lamps, 1))
            inside = ((s - lamp_s) ** 2 + (t - lamp_t) ** 2 < lamp_r**2) & (slot < n_lamps)
            if not inside.any():
                continue
            ped = n_lamps < 2.5
            lit = np.where(
                ped,
                np.where(slot == 0, state < 1.5, state > 1.5),
                ((slot == 0) & ((state == 0) | (state == 3)))
                | ((slot == 1) & ((state == 1) | (state == 3)))
                | ((slot == 2) & (state == 2)),
            )
            on = np.array([[1.0, 0.15, 0.1], [1.0, 0.7, 0.1], [0.3, 1.0, 0.6]], np.float32)[
                np.where(ped, np.where(slot == 0, 0, 2), slot)
            ]
            lamp = np.where(lit[:, None], on, on * 0.15 + 0.05)
            out = np.where(inside[:, None], lamp, out)
        return out

    def m_fence(self, pixels: Pixels) -> np.ndarray:
        s, t = pixels.st()
        height, style = pixels.par(0), pixels.par(1)
        albedo = pixels.col()
        if not self.tex:
            return self.light(pixels, albedo)
        bars = np.where(style == 1, _wrap(s, 0.15) < 0.12, _wrap(s, 0.13) < 0.035)
        wire_mesh = (_wrap(s + t, 0.08) < 0.015) | (_wrap(s - t, 0.08) < 0.015)
        bars = np.where(style == 2, wire_mesh, bars)
        rails = (np.abs(t - 0.12) < 0.04) | (np.abs(t - height + 0.06) < 0.04)
        solid = bars | rails
        fade = np.clip(2 - pixels.footprint() / 0.03, 0, 1)
        shade = np.where(solid, 1.0, 0.45) * fade + 0.7 * (1 - fade)
        return self.light(pixels, albedo * shade[:, None])

    def m_wall(self, pixels: Pixels) -> np.ndarray:
        albedo = pixels.col()
        if self.tex:
            s, t = pixels.st()
            height = pixels.par(0)
            shade = 1 + self.tex * (
                0.08 * _noise(1, s * 3, t * 3) + 0.06 * _noise(2, s * 20, t * 20)
            )
            shade = np.where(t > height - 0.08, shade * 1.15, shade)
            albedo = albedo * shade[:, None]
        return self.light(pixels, albedo)

    def m_tire(self, pixels: Pixels) -> np.ndarray:
        albedo = pixels.col()
        radius = pixels.par(0)
        if (radius > 0).any():
            s, t = pixels.st()
            rho = np.sqrt(s * s + t * t) / np.maximum(radius, 1e-3)
            rim = (radius > 0) & (rho < 0.58)
            albedo = np.where(rim[:, None], np.float32(0.42), albedo)
            albedo = np.where((rim & (rho < 0.15))[:, None], np.float32(0.2), albedo)
        return self.light(pixels, albedo)

    def m_hood(self, pixels: Pixels) -> np.ndarray:
        # The bonnet: paint lit from above with a gradient towards the camera.
        cam = self.cam
        row_frac = (pixels.pix // cam.width).astype(np.float32) / cam.height
        albedo = pixels.col() * (0.75 + 0.5 * (1 - row_frac))[:, None]
        return albedo * (self.style.ambient + 0.3 * self.style.sun_strength)

    def sky(self, pix: np.ndarray, rays: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """Sky colour along world-space view rays: gradient, clouds and the sun's glow."""
        style = self.style
        rx, ry, rz = rays
        norm = np.sqrt(rx * rx + ry * ry + rz * rz)
        elevation = rz / norm
        zenith_w = np.clip(elevation, 0, 1) ** 0.55
        horizon = np.array(style.sky_horizon, np.float32)
        zenith = np.array(style.sky_zenith, np.float32)
        col = horizon * (1 - zenith_w[:, None]) + zenith * zenith_w[:, None]
        if self.tex:
            safe_elevation = np.maximum(elevation, 0.02)
            cloud_u = (rx / norm) / safe_elevation * 0.35 + self.eye[0] * 0.0002
            cloud_v = (ry / norm) / safe_elevation * 0.35 + self.eye[1] * 0.0002
            cloud_noise = _noise(0, cloud_u * 16, cloud_v * 16) + 0.4 * _noise(
                3, cloud_u * 50, cloud_v * 50
            )
            threshold = 0.55 - 1.0 * style.cloud_cover
            cloud = _smoothstep(threshold, threshold + 0.35, cloud_noise) * np.clip(
                (elevation - 0.015) * 12, 0, 1
            )
            cloud_col = (
                np.array(style.cloud_color, np.float32)
                * (0.8 + 0.2 * np.clip(cloud_noise, 0, 1))[:, None]
            )
            col = col * (1 - cloud[:, None]) + cloud_col * cloud[:, None]
            if style.sun_strength > 0.2:
                cos_sun = (rx * self.sun[0] + ry * self.sun[1] + rz * self.sun[2]) / norm
                glow = style.sun_strength * 0.35 * np.exp((cos_sun - 1) * 25)
                col = col + glow[:, None] * np.array([1.0, 0.95, 0.85], np.float32)
        return col


MATERIAL_FUNCS = {
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


class ShadedFrame(NamedTuple):
    """The deferred pass's output: the lit image and the G-buffer the effects still need."""

    rgb: np.ndarray  # (H * W, 3) float32 linear RGB, sky included
    pix: np.ndarray  # flat image index of every non-sky pixel
    poly_id: np.ndarray  # its polygon id
    dist: np.ndarray  # its distance to the camera in metres (float32)


def shade_frame(
    scene: Scene,
    tables: PolygonTables,
    cam: CameraModel,
    eye: np.ndarray,
    rot: np.ndarray,
    polygon_ids: np.ndarray,
    zbuf: np.ndarray,
    n_ground: int,
    hood_id: int,
    *,
    textures: bool,
    ground_light: tuple[np.ndarray, np.ndarray] | None,
) -> ShadedFrame:
    """Shade every pixel of the polygon-id buffer (-1: sky) by its polygon's material.

    ``zbuf`` holds 1/Z of the objects; the ground's 1/Z comes from its planes in ``tables``
    (it is painted without a depth test) and the bonnet's is 1. ``ground_light`` is the
    ground's (sun visibility, ambient occlusion) per flat pixel, or None for none.
    """
    width, height = int(cam.width), int(cam.height)
    flat = polygon_ids.ravel()
    pix = np.flatnonzero(flat >= 0)
    poly_id = flat[pix]
    uu = (pix % width).astype(np.float32)
    vv = (pix // width).astype(np.float32)
    inv_z = zbuf.ravel()[pix]
    is_ground = poly_id < n_ground
    ground_inv_z = tables.iz_a[poly_id] * uu + tables.iz_b[poly_id] * vv + tables.iz_c[poly_id]
    inv_z = np.where(is_ground, ground_inv_z, inv_z)
    inv_z = np.where(poly_id == hood_id, np.float32(1.0), inv_z)
    z = 1.0 / np.maximum(inv_z, 1e-6)
    xn = (uu - cam.cx) / cam.fx
    yn = (vv - cam.cy) / cam.fy
    cam_to_world = rot.T.astype(np.float32)
    rx = cam_to_world[0, 0] * xn + cam_to_world[0, 1] * yn + cam_to_world[0, 2]
    ry = cam_to_world[1, 0] * xn + cam_to_world[1, 1] * yn + cam_to_world[1, 2]
    rz = cam_to_world[2, 0] * xn + cam_to_world[2, 1] * yn + cam_to_world[2, 2]

    shader = Shader(scene, tables, cam, eye, rot, textures=textures)
    # The visible surface point of every non-sky pixel, in world coordinates.
    shader.pix, shader.poly_id = pix, poly_id
    shader.px = (eye[0] + z * rx).astype(np.float32)
    shader.py = (eye[1] + z * ry).astype(np.float32)
    shader.pz = (eye[2] + z * rz).astype(np.float32)
    shader.dist = (z * np.sqrt(rx * rx + ry * ry + rz * rz)).astype(np.float32)
    if ground_light is not None:
        shader.sunlit, shader.occl = ground_light

    rgb = np.zeros((height * width, 3), np.float32)
    # One vectorised call per material over all of its pixels.
    mats = tables.mat[poly_id]
    order = np.argsort(mats, kind='stable')
    counts = np.bincount(mats, minlength=N_MAT)
    start = 0
    for mat in range(N_MAT):
        count = int(counts[mat])
        if count == 0:
            continue
        sel = order[start : start + count]
        start += count
        pixels = Pixels(shader, sel)
        rgb[pixels.pix] = getattr(shader, MATERIAL_FUNCS[mat])(pixels)
    sky = np.flatnonzero(flat < 0)
    if len(sky):
        sky_u = (sky % width).astype(np.float32)
        sky_v = (sky // width).astype(np.float32)
        sky_xn = (sky_u - cam.cx) / cam.fx
        sky_yn = (sky_v - cam.cy) / cam.fy
        rays = tuple(
            cam_to_world[k, 0] * sky_xn + cam_to_world[k, 1] * sky_yn + cam_to_world[k, 2]
            for k in range(3)
        )
        rgb[sky] = shader.sky(sky, rays)
    return ShadedFrame(rgb, pix, poly_id, shader.dist)
