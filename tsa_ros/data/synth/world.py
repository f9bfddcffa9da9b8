"""Procedural street world for the synthetic Cityscapes-like data set: scene sampling and motion.

A scene is a straight urban street measured in metres. World ``x`` runs along the road (the
ego car drives towards ``+x``), ``y`` points to the left and ``z`` up; traffic keeps right,
so the ego car's lanes lie at ``y < 0``. :func:`sample_scene` draws everything a 30-frame
Cityscapes snippet needs (layout, buildings, street furniture, vegetation, road users and
their motion, lighting style, camera jitter) from one random generator, so a scene is a pure
description and :func:`tsa_ros.data.synth.render.render_frame` turns it into pixels.

Time: frame ``f`` shows the world at ``t = f / FPS`` seconds. Road users are placed relative
to the ego car at the annotated frame 19 (``T_REF``), where the ego car stands at ``x = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from cityscapesscripts.helpers.labels import name2label

from tsa_ros.data.camera import CameraModel


def _lid(name: str) -> int:
    return int(name2label[name].id)


# Cityscapes label ids used by the world (read from cityscapesScripts, never typed by hand).
EGO_VEHICLE = _lid('ego vehicle')
STATIC = _lid('static')
GROUND = _lid('ground')
ROAD = _lid('road')
SIDEWALK = _lid('sidewalk')
PARKING = _lid('parking')
BUILDING = _lid('building')
WALL = _lid('wall')
FENCE = _lid('fence')
GUARD_RAIL = _lid('guard rail')
POLE = _lid('pole')
TRAFFIC_LIGHT = _lid('traffic light')
TRAFFIC_SIGN = _lid('traffic sign')
VEGETATION = _lid('vegetation')
TERRAIN = _lid('terrain')
SKY = _lid('sky')
PERSON = _lid('person')
RIDER = _lid('rider')
CAR = _lid('car')
TRUCK = _lid('truck')
BUS = _lid('bus')
TRAIN = _lid('train')
MOTORCYCLE = _lid('motorcycle')
BICYCLE = _lid('bicycle')

#: Every label id the renderer can output.
LABEL_IDS = (
    EGO_VEHICLE,
    STATIC,
    GROUND,
    ROAD,
    SIDEWALK,
    PARKING,
    BUILDING,
    WALL,
    FENCE,
    GUARD_RAIL,
    POLE,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    VEGETATION,
    TERRAIN,
    SKY,
    PERSON,
    RIDER,
    CAR,
    TRUCK,
    BUS,
    TRAIN,
    MOTORCYCLE,
    BICYCLE,
)

FPS = 17.0  # Cityscapes snippets are recorded at 17 Hz
NUM_FRAMES = 30
ANNOTATED_FRAME = 19
T_REF = ANNOTATED_FRAME / FPS  # world time of the annotated frame

Color = tuple[float, float, float]


# --------------------------------------------------------------------------------------------
# Style


@dataclass(frozen=True)
class SceneStyle:
    """Per-scene look: lighting, sky, haze, palette and camera/sensor character.

    Colours are linear-ish RGB in [0, 1]; angles in radians; the sun direction is given in
    world coordinates (azimuth from +x towards +y).
    """

    sun_azimuth: float = 0.8
    sun_elevation: float = 0.7
    sun_strength: float = 0.6  # 0 = overcast (no direct light, no cast shadows)
    ambient: float = 0.62
    sun_color: Color = (1.0, 0.97, 0.9)
    sky_zenith: Color = (0.42, 0.55, 0.75)
    sky_horizon: Color = (0.78, 0.82, 0.86)
    cloud_cover: float = 0.4
    cloud_color: Color = (0.92, 0.92, 0.93)
    haze_color: Color = (0.75, 0.78, 0.8)
    haze_distance: float = 350.0  # metres for the haze to reach 1 - 1/e
    exposure: float = 1.0
    white_balance: Color = (1.0, 1.0, 1.0)
    saturation: float = 0.85
    gamma: float = 1.0
    contrast: float = 1.0
    noise_sigma: float = 0.012  # sensor noise, fraction of full scale
    blur_sigma: float = 0.6  # pixels at 1024 px image width
    vignetting: float = 0.25
    texture_strength: float = 1.0
    asphalt: Color = (0.33, 0.33, 0.34)
    paving: Color = (0.55, 0.54, 0.52)
    grass: Color = (0.33, 0.42, 0.2)
    foliage: Color = (0.22, 0.32, 0.13)


def sample_style(rng: np.random.Generator) -> SceneStyle:
    """Draw a daylight look: overcast, hazy, sunny or low evening sun."""
    mood = rng.choice(['overcast', 'sunny', 'hazy', 'evening'], p=[0.38, 0.37, 0.12, 0.13])
    u = rng.uniform
    if mood == 'overcast':
        sun_strength, ambient, elev = u(0.0, 0.15), u(0.72, 0.9), u(0.4, 1.0)
        zen = (u(0.58, 0.7),) * 3
        hor = (u(0.8, 0.9),) * 3
        cover, haze_d = u(0.6, 1.0), u(250, 500)
    elif mood == 'sunny':
        sun_strength, ambient, elev = u(0.45, 0.7), u(0.5, 0.62), u(0.45, 1.1)
        zen = (u(0.25, 0.4), u(0.42, 0.55), u(0.65, 0.85))
        hor = (u(0.7, 0.8), u(0.78, 0.85), u(0.85, 0.92))
        cover, haze_d = u(0.05, 0.5), u(400, 900)
    elif mood == 'hazy':
        sun_strength, ambient, elev = u(0.15, 0.35), u(0.62, 0.78), u(0.4, 0.9)
        zen = (u(0.55, 0.65), u(0.6, 0.7), u(0.68, 0.78))
        hor = (u(0.8, 0.88),) * 3
        cover, haze_d = u(0.3, 0.8), u(90, 200)
    else:  # evening: low, warm sun
        sun_strength, ambient, elev = u(0.35, 0.6), u(0.48, 0.6), u(0.15, 0.35)
        zen = (u(0.35, 0.45), u(0.45, 0.55), u(0.62, 0.75))
        hor = (u(0.85, 0.95), u(0.75, 0.85), u(0.62, 0.72))
        cover, haze_d = u(0.1, 0.6), u(250, 600)
    warm = 0.1 if mood == 'evening' else 0.0
    sun_color = (1.0, 0.96 - warm, 0.9 - 2 * warm)
    haze = tuple(
        float(np.clip(0.5 * z + 0.5 * h + rng.normal(0, 0.01), 0, 1))
        for z, h in zip(zen, hor, strict=True)
    )
    wb = tuple(float(g) for g in 1.0 + rng.normal(0, 0.035, 3))
    grass = (u(0.28, 0.4), u(0.38, 0.47), u(0.15, 0.24))
    foliage = (u(0.22, 0.34), u(0.33, 0.45), u(0.1, 0.2))
    grey = u(0.28, 0.4)
    asphalt = (grey, grey + u(-0.01, 0.01), grey + u(0.0, 0.02))
    paving_kind = rng.integers(3)
    paving = [(0.55, 0.54, 0.52), (0.6, 0.5, 0.46), (0.48, 0.48, 0.48)][paving_kind]
    paving = tuple(float(np.clip(c + u(-0.05, 0.05), 0, 1)) for c in paving)
    return SceneStyle(
        sun_azimuth=float(u(-math.pi, math.pi)),
        sun_elevation=float(elev),
        sun_strength=float(sun_strength),
        ambient=float(ambient),
        sun_color=sun_color,
        sky_zenith=tuple(float(c) for c in zen),
        sky_horizon=tuple(float(c) for c in hor),
        cloud_cover=float(cover),
        cloud_color=(0.93, 0.93, 0.94) if mood != 'evening' else (0.95, 0.88, 0.82),
        haze_color=haze,
        haze_distance=float(haze_d),
        exposure=float(u(0.88, 1.1)),
        white_balance=wb,
        saturation=float(u(0.65, 0.95)),
        gamma=float(u(0.9, 1.1)),
        contrast=float(u(0.88, 1.08)),
        noise_sigma=float(u(0.004, 0.02)),
        blur_sigma=float(u(0.35, 0.9)),
        vignetting=float(u(0.1, 0.45)),
        texture_strength=float(u(0.7, 1.2)),
        asphalt=asphalt,
        paving=paving,
        grass=grass,
        foliage=foliage,
    )


# --------------------------------------------------------------------------------------------
# World objects. All static ones are plain data; moving ones know their pose at time t.


@dataclass
class GroundPoly:
    """A flat ground-level polygon (or a vertical curb face), drawn back-to-front in order."""

    verts: np.ndarray  # (n, 3) world metres
    label: int
    kind: str  # 'road', 'parking', 'sidewalk', 'curb', 'grass', 'ground', 'gravel'
    color: Color


@dataclass(frozen=True)
class Marking:
    """Paint on the road (still label road): a dashed line along x or a filled rectangle."""

    x0: float
    x1: float
    y0: float
    y1: float
    dash: float = 0.0  # dash length along x (0 = solid)
    gap: float = 0.0
    stripes_y: float = 0.0  # zebra: period of stripes along y (0 = none)
    brightness: float = 0.85


@dataclass
class RoadLayout:
    """The street's cross section and the painted markings / tram rails on it."""

    lane_width: float
    lanes_right: int  # lanes in the ego direction (y < 0)
    lanes_left: int  # oncoming lanes (y > 0)
    edge_right: float  # signed y of the right curb
    edge_left: float  # signed y of the left curb
    curb_height: float
    x_start: float
    x_end: float  # the street ends in a T-junction here, facing a row of buildings
    crossing: tuple[float, float] | None  # x-range of a cross street
    tram_y: float | None  # centre of a tram track embedded in the road
    markings: list[Marking] = field(default_factory=list)
    ground: list[GroundPoly] = field(default_factory=list)


@dataclass(frozen=True)
class Facade:
    """Facade style: wall colour plus a window grid, storeys and a ground floor."""

    color: Color
    window_color: Color
    frame_color: Color
    storey: float = 3.2
    ground_floor: float = 4.0
    win_w: float = 1.2
    win_h: float = 1.5
    spacing: float = 2.6
    sill: float = 0.9
    shop: bool = False
    band: float = 0.0  # cornice band at every storey line (m), 0 = none
    offset: float = 0.0
    texture: int = 0  # 0 plaster, 1 brick, 2 concrete panels, 3 glass office


@dataclass
class Building:
    corners: np.ndarray  # (4, 2) footprint, counter-clockwise seen from above
    height: float
    facade: Facade
    roof_height: float = 0.0  # pitched roof rising above ``height`` (0 = flat)
    roof_color: Color = (0.35, 0.2, 0.16)


@dataclass
class Block:
    """A static box: wall, hedge, fence, guard rail, bin, electrical cabinet, bench ..."""

    corners: np.ndarray  # (4, 2) counter-clockwise seen from above
    z0: float
    z1: float
    label: int
    kind: str  # 'wall', 'hedge', 'fence', 'guardrail', 'static', 'concrete'
    color: Color


@dataclass
class Pole:
    """A vertical cylinder: poles, bollards, advertising columns, catenary masts."""

    x: float
    y: float
    z0: float
    height: float
    radius: float
    label: int = POLE
    color: Color = (0.45, 0.46, 0.47)


@dataclass
class StreetLight:
    x: float
    y: float
    z0: float
    height: float
    arm_yaw: float  # direction the arm points to (towards the road)
    arm_length: float
    color: Color = (0.42, 0.44, 0.45)


@dataclass
class TrafficLight:
    x: float
    y: float
    z0: float
    pole_height: float
    facing: float  # yaw of the direction the lamps shine to
    state: int  # 0 red, 1 amber, 2 green, 3 red+amber
    box_z: float  # bottom of the lamp box above the pole base
    arm_length: float = 0.0  # mast arm over the road (box hangs at its end)
    pedestrian: bool = False  # small two-lamp box


@dataclass(frozen=True)
class Plate:
    z: float  # centre height above the pole base
    shape: str  # 'circle', 'triangle', 'rect', 'diamond', 'octagon'
    size: float
    face: Color
    border: Color


@dataclass
class Sign:
    x: float
    y: float
    z0: float
    pole_height: float
    facing: float  # yaw the sign's front faces to
    plates: tuple[Plate, ...]


@dataclass(frozen=True)
class Crown:
    dx: float
    dy: float
    z: float  # centre height above the tree's base
    radius: float
    seed: int


@dataclass
class Tree:
    x: float
    y: float
    z0: float
    trunk_height: float
    trunk_radius: float
    crowns: tuple[Crown, ...]
    color: Color
    trunk_color: Color = (0.3, 0.25, 0.2)


@dataclass
class Vehicle:
    """A car, van, truck, bus or tram moving with constant speed along its heading."""

    kind: str  # 'car', 'van', 'truck', 'bus', 'tram'
    x: float  # footprint centre at T_REF
    y: float
    yaw: float
    speed: float
    length: float
    width: float
    height: float
    color: Color
    parked: bool = False
    accent: Color = (0.8, 0.8, 0.8)

    @property
    def label(self) -> int:
        return {'car': CAR, 'van': CAR, 'truck': TRUCK, 'bus': BUS, 'tram': TRAIN}[self.kind]

    def pose(self, t: float) -> tuple[float, float, float]:
        d = self.speed * (t - T_REF)
        return self.x + d * math.cos(self.yaw), self.y + d * math.sin(self.yaw), self.yaw


@dataclass
class Person:
    x: float
    y: float
    z0: float
    yaw: float
    speed: float
    height: float
    shirt: Color
    pants: Color
    skin: Color
    hair: Color
    phase: float
    width: float = 0.45
    label: int = PERSON

    def pose(self, t: float) -> tuple[float, float, float]:
        d = self.speed * (t - T_REF)
        return self.x + d * math.cos(self.yaw), self.y + d * math.sin(self.yaw), self.yaw

    def gait(self, t: float) -> float:
        """Walking phase in radians (one stride ~ 1.4 m)."""
        return self.phase + 2 * math.pi * self.speed * (t - T_REF) / 1.4


@dataclass
class TwoWheeler:
    kind: str  # 'bicycle' or 'motorcycle'
    x: float
    y: float
    z0: float
    yaw: float
    speed: float
    color: Color
    rider: Person | None

    @property
    def label(self) -> int:
        return BICYCLE if self.kind == 'bicycle' else MOTORCYCLE

    def pose(self, t: float) -> tuple[float, float, float]:
        d = self.speed * (t - T_REF)
        return self.x + d * math.cos(self.yaw), self.y + d * math.sin(self.yaw), self.yaw


@dataclass
class EgoMotion:
    """Ego car path: constant acceleration along the lane plus a gentle sinusoidal weave."""

    y0: float
    speed: float  # at T_REF, m/s
    accel: float
    weave: float  # lateral amplitude, m
    weave_freq: float  # rad/s
    weave_phase: float
    heading: float  # constant yaw offset to the road, rad
    bounce: float  # pitch oscillation amplitude, rad
    bounce_freq: float

    def pose(self, t: float) -> tuple[float, float, float, float]:
        """(x, y, yaw, pitch offset) of the camera's ground point at time t."""
        dt = t - T_REF
        x = self.speed * dt + 0.5 * self.accel * dt * dt
        v = max(self.speed + self.accel * dt, 0.0)
        y = (
            self.y0
            + x * math.tan(self.heading)
            + self.weave * math.sin(self.weave_freq * t + self.weave_phase)
        )
        dy = self.weave * self.weave_freq * math.cos(self.weave_freq * t + self.weave_phase)
        yaw = self.heading + (math.atan2(dy, v) if v > 0.5 else 0.0)
        pitch = self.bounce * math.sin(self.bounce_freq * t) * min(1.0, v / 5.0)
        return x, y, yaw, pitch


@dataclass(frozen=True)
class Hood:
    """The ego car's bonnet at the bottom of the image (image-space fractions)."""

    centre_height: float  # fraction of the image height covered at the centre
    side_height: float  # ... at the left/right border
    centre_x: float  # fraction of the image width
    color: Color
    reflect: float  # strength of the scene's reflection in the paint


@dataclass
class Scene:
    """Everything needed to render any frame of one 30-frame snippet."""

    seed: int
    style: SceneStyle
    district: str
    camera: CameraModel  # the jittered mounting (mount height, pitch, roll, yaw)
    ego: EgoMotion
    road: RoadLayout
    hood: Hood
    buildings: list[Building] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    poles: list[Pole] = field(default_factory=list)
    lights: list[StreetLight] = field(default_factory=list)
    traffic_lights: list[TrafficLight] = field(default_factory=list)
    signs: list[Sign] = field(default_factory=list)
    trees: list[Tree] = field(default_factory=list)
    vehicles: list[Vehicle] = field(default_factory=list)
    two_wheelers: list[TwoWheeler] = field(default_factory=list)
    persons: list[Person] = field(default_factory=list)

    def camera_for(self, camera: CameraModel) -> CameraModel:
        """``camera``'s intrinsics and size with this scene's mounting (what render_frame uses)."""
        return replace(
            camera,
            mount_height=self.camera.mount_height,
            pitch=self.camera.pitch,
            roll=self.camera.roll,
            yaw=self.camera.yaw,
        )


# --------------------------------------------------------------------------------------------
# Sampling helpers

Y_FAR = 110.0  # lateral extent of the modelled world
X_START = -70.0  # the ego car starts at most ~16 m behind x = 0

_CAR_COLORS = (
    ((0.08, 0.08, 0.09), 0.2),  # black
    ((0.82, 0.83, 0.83), 0.2),  # white
    ((0.55, 0.56, 0.57), 0.18),  # silver
    ((0.3, 0.31, 0.33), 0.16),  # grey
    ((0.1, 0.17, 0.38), 0.09),  # blue
    ((0.45, 0.06, 0.06), 0.07),  # red
    ((0.13, 0.25, 0.16), 0.03),  # green
    ((0.58, 0.52, 0.4), 0.04),  # beige
    ((0.62, 0.45, 0.1), 0.03),  # ochre
)
_FACADE_COLORS = (
    (0.78, 0.72, 0.6),
    (0.83, 0.81, 0.76),
    (0.62, 0.62, 0.6),
    (0.8, 0.7, 0.48),
    (0.76, 0.6, 0.5),
    (0.52, 0.3, 0.22),
    (0.68, 0.72, 0.66),
    (0.46, 0.45, 0.43),
    (0.74, 0.66, 0.6),
    (0.6, 0.52, 0.42),
)
_SHIRTS = (
    (0.1, 0.1, 0.12),
    (0.2, 0.22, 0.3),
    (0.55, 0.1, 0.1),
    (0.7, 0.7, 0.68),
    (0.25, 0.35, 0.2),
    (0.15, 0.25, 0.5),
    (0.45, 0.35, 0.25),
    (0.6, 0.55, 0.2),
    (0.35, 0.35, 0.37),
)
_PANTS = ((0.08, 0.08, 0.1), (0.15, 0.18, 0.3), (0.3, 0.28, 0.25), (0.4, 0.4, 0.42))
_SKIN = ((0.85, 0.68, 0.55), (0.72, 0.55, 0.42), (0.5, 0.36, 0.26), (0.32, 0.22, 0.16))


def _jitter(rng: np.random.Generator, color: Color, amount: float) -> Color:
    return tuple(
        min(1.0, max(0.0, c * (1.0 + amount * float(z))))
        for c, z in zip(color, rng.standard_normal(len(color)), strict=True)
    )


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _rect(x0: float, x1: float, y0: float, y1: float, z: float) -> np.ndarray:
    """Axis-aligned rectangle at height z, counter-clockwise seen from above."""
    xa, xb = min(x0, x1), max(x0, x1)
    ya, yb = min(y0, y1), max(y0, y1)
    return np.array([[xa, ya, z], [xb, ya, z], [xb, yb, z], [xa, yb, z]], dtype=np.float64)


def _footprint(cx: float, cy: float, length: float, width: float, yaw: float) -> np.ndarray:
    """Oriented rectangle (4, 2), counter-clockwise seen from above."""
    c, s = math.cos(yaw), math.sin(yaw)
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * [
        length / 2,
        width / 2,
    ]
    rot = np.array([[c, -s], [s, c]])
    return half @ rot.T + [cx, cy]


class _Occupancy:
    """1-D intervals along x already taken on one lateral line, to keep things apart."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []

    def free(self, x0: float, x1: float) -> bool:
        return all(x1 <= a or x0 >= b for a, b in self.spans)

    def take(self, x0: float, x1: float) -> None:
        self.spans.append((x0, x1))


@dataclass
class _Side:
    """One side of the street: signed direction, strip edges (|y|) and what is where."""

    sign: int  # -1 right, +1 left
    curb: float  # |y| of the curb
    parking: float  # width of the parking strip inside the curb (0 = none)
    parking_label: bool
    grass: float  # terrain strip between curb and sidewalk
    sidewalk: float
    front: float  # front zone between sidewalk and buildings
    front_kind: str  # 'paving', 'grass', 'gravel'
    front_edge: str  # 'none', 'hedge', 'fence', 'wall'
    trees: bool
    blocks: list[tuple[float, float]] = field(default_factory=list)  # x-ranges of the blocks
    furniture: _Occupancy = field(default_factory=_Occupancy)

    @property
    def walk0(self) -> float:  # |y| where the sidewalk starts
        return self.curb + self.grass

    @property
    def building_line(self) -> float:
        return self.curb + self.grass + self.sidewalk + self.front

    def y(self, d: float) -> float:
        """Signed y of a point ``d`` metres outwards from the road centre line."""
        return self.sign * d


# --------------------------------------------------------------------------------------------
# Scene sampling


def sample_scene(rng: np.random.Generator, camera: CameraModel) -> Scene:
    """Draw one street scene (layout, objects, motion, style and camera jitter)."""
    seed = int(rng.integers(0, 2**31 - 1))
    style = sample_style(rng)
    district = str(
        rng.choice(['city', 'residential', 'green', 'industrial'], p=[0.42, 0.3, 0.16, 0.12])
    )
    cam = replace(
        camera,
        mount_height=float(np.clip(camera.mount_height + rng.uniform(-0.05, 0.26), 1.15, 1.6)),
        pitch=float(camera.pitch + rng.normal(0, 0.012)),
        roll=float(camera.roll + rng.normal(0, 0.006)),
        yaw=float(camera.yaw + rng.normal(0, 0.006)),
    )
    hood = Hood(
        centre_height=float(rng.uniform(0.03, 0.09)),
        side_height=float(rng.uniform(0.0, 0.6)),
        centre_x=float(rng.uniform(0.45, 0.55)),
        color=_jitter(
            rng,
            _pick(
                rng, ((0.06, 0.06, 0.07), (0.5, 0.51, 0.53), (0.8, 0.8, 0.8), (0.12, 0.14, 0.2))
            ),
            0.05,
        ),
        reflect=float(rng.uniform(0.15, 0.45)),
    )
    builder = _Builder(rng, district, style)
    road, sides = builder.layout()
    ego = builder.ego_motion(road)
    scene = Scene(
        seed=seed, style=style, district=district, camera=cam, ego=ego, road=road, hood=hood
    )
    builder.populate(scene, sides)
    return scene


class _Builder:
    """Stateful helper that samples a scene piece by piece."""

    def __init__(self, rng: np.random.Generator, district: str, style: SceneStyle) -> None:
        self.rng = rng
        self.district = district
        self.style = style

    # ---- layout -----------------------------------------------------------------------------

    def layout(self) -> tuple[RoadLayout, list[_Side]]:
        rng, d = self.rng, self.district
        u = rng.uniform
        lane_w = u(2.9, 3.5)
        if d == 'industrial':
            lanes_r, lanes_l = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        elif d == 'city':
            lanes_r = int(rng.choice([1, 2], p=[0.55, 0.45]))
            lanes_l = int(rng.choice([0, 1, 2], p=[0.12, 0.5, 0.38]))
        else:
            lanes_r, lanes_l = 1, int(rng.choice([0, 1], p=[0.15, 0.85]))
        tram = lanes_l >= 1 and rng.random() < {'city': 0.7, 'residential': 0.25}.get(d, 0.0)
        curb_h = u(0.1, 0.16)
        x_end = float(u(110, 260))
        crossing = None
        if rng.random() < 0.6:
            x0 = float(u(14, 70))
            crossing = (x0, x0 + float(u(9, 16)))

        sides = []
        for sign, lanes in ((-1, lanes_r), (1, lanes_l)):
            park_p = {'city': 0.5, 'residential': 0.55, 'green': 0.3, 'industrial': 0.3}[d]
            parking = u(2.0, 2.4) if rng.random() < park_p else 0.0
            if sign == 1 and tram and lanes_l == 1:
                parking = 0.0 if rng.random() < 0.6 else parking
            curb = lanes * lane_w + parking + (0.0 if lanes else u(0.5, 1.5))
            green = {'city': 0.3, 'residential': 0.45, 'green': 0.85, 'industrial': 0.4}[d]
            grass = u(1.2, 3.5) if rng.random() < green else 0.0
            sidewalk = {
                'city': u(2.5, 5.5),
                'residential': u(1.8, 3.2),
                'green': u(1.8, 3.0),
                'industrial': u(1.8, 3.0),
            }[d]
            if d == 'city':
                front = 0.0 if rng.random() < 0.7 else u(1.0, 3.0)
                kinds = ('paving', 'grass', 'gravel')
            else:
                front = u(2.0, 8.0)
                kinds = ('grass', 'grass', 'paving', 'gravel')
            edge = (
                _pick(rng, ('none', 'hedge', 'hedge', 'fence', 'wall'))
                if front > 1.5
                else ('none')
            )
            sides.append(
                _Side(
                    sign=sign,
                    curb=curb,
                    parking=parking,
                    parking_label=parking > 0 and rng.random() < 0.4,
                    grass=grass,
                    sidewalk=sidewalk,
                    front=front,
                    front_kind=_pick(rng, kinds),
                    front_edge=edge,
                    trees=rng.random() < (0.85 if grass else 0.45),
                )
            )

        road = RoadLayout(
            lane_width=lane_w,
            lanes_right=lanes_r,
            lanes_left=lanes_l,
            edge_right=-sides[0].curb,
            edge_left=sides[1].curb,
            curb_height=curb_h,
            x_start=X_START,
            x_end=x_end,
            crossing=crossing,
            tram_y=lane_w * 0.5 if tram else None,  # on the inner oncoming lane
        )
        for side in sides:
            side.blocks = self._blocks(road)
        self._markings(road, sides)
        self._ground(road, sides)
        return road, sides

    @staticmethod
    def _blocks(road: RoadLayout) -> list[tuple[float, float]]:
        if road.crossing is None:
            return [(road.x_start, road.x_end)]
        return [(road.x_start, road.crossing[0]), (road.crossing[1], road.x_end)]

    def _markings(self, road: RoadLayout, sides: list[_Side]) -> None:
        rng = self.rng
        lw = road.lane_width
        marks = road.markings
        x0, x1 = road.x_start, road.x_end
        spans = (
            [(x0, x1)]
            if road.crossing is None
            else [(x0, road.crossing[0]), (road.crossing[1], x1)]
        )
        worn = rng.uniform(0.6, 0.9)
        line = rng.uniform(0.1, 0.15)
        for a, b in spans:
            # Centre line between the directions.
            if road.lanes_left and road.lanes_right:
                style = _pick(rng, ('dashed', 'solid', 'double'))
                if style == 'double':
                    for off in (-0.12, 0.12):
                        marks.append(
                            Marking(a, b, off - line / 2, off + line / 2, brightness=worn)
                        )
                else:
                    dash = 3.0 if style == 'dashed' else 0.0
                    marks.append(
                        Marking(
                            a,
                            b,
                            -line / 2,
                            line / 2,
                            dash=dash,
                            gap=6.0 * (dash > 0),
                            brightness=worn,
                        )
                    )
            # Lane lines within one direction.
            for k in range(1, road.lanes_right):
                marks.append(
                    Marking(
                        a,
                        b,
                        -k * lw - line / 2,
                        -k * lw + line / 2,
                        dash=3.0,
                        gap=6.0,
                        brightness=worn,
                    )
                )
            for k in range(1, road.lanes_left):
                marks.append(
                    Marking(
                        a,
                        b,
                        k * lw - line / 2,
                        k * lw + line / 2,
                        dash=3.0,
                        gap=6.0,
                        brightness=worn,
                    )
                )
            # Parking strip edges.
            for side in sides:
                if side.parking > 0 and not side.parking_label and rng.random() < 0.5:
                    yy = side.curb - side.parking
                    marks.append(
                        Marking(a, b, side.y(yy) - 0.06, side.y(yy) + 0.06, brightness=worn * 0.9)
                    )
        if road.crossing is not None:
            c0, c1 = road.crossing
            # Zebra crossings in front of and behind the cross street, stop line before.
            width = rng.uniform(3.0, 4.5)
            zebra_x = c0 - 1.0 - width
            if rng.random() < 0.75:
                marks.append(
                    Marking(
                        zebra_x,
                        zebra_x + width,
                        road.edge_right,
                        road.edge_left,
                        stripes_y=1.0,
                        brightness=worn,
                    )
                )
            if rng.random() < 0.5:
                marks.append(
                    Marking(
                        c1 + 1.0,
                        c1 + 1.0 + width,
                        road.edge_right,
                        road.edge_left,
                        stripes_y=1.0,
                        brightness=worn,
                    )
                )
            stop = zebra_x - 1.5
            if road.lanes_right:
                marks.append(
                    Marking(stop - 0.4, stop, -road.lanes_right * lw, 0.0, brightness=worn)
                )
        self.zebra = road.crossing[0] - 1.0 - 2.0 if road.crossing else None

    def _ground(self, road: RoadLayout, sides: list[_Side]) -> None:
        """Ground polygons, back to front: road at z=0, then raised sidewalk-level areas."""
        st, rng = self.style, self.rng
        g = road.ground
        h = road.curb_height
        asphalt, paving = st.asphalt, st.paving
        curb_col = _jitter(rng, (0.62, 0.62, 0.6), 0.05)
        x0, x1 = road.x_start, road.x_end
        # Main road, cross street and the T-junction at the far end.
        g.append(
            GroundPoly(
                _rect(x0, x1 + 14, road.edge_right, road.edge_left, 0.0), ROAD, 'road', asphalt
            )
        )
        g.append(GroundPoly(_rect(x1, x1 + 14, -Y_FAR, Y_FAR, 0.0), ROAD, 'road', asphalt))
        if road.crossing:
            c0, c1 = road.crossing
            g.append(GroundPoly(_rect(c0, c1, -Y_FAR, Y_FAR, 0.0), ROAD, 'road', asphalt))
        for side in sides:
            s = side.sign
            for a, b in side.blocks:
                if side.parking > 0 and side.parking_label:
                    g.append(
                        GroundPoly(
                            _rect(a, b, s * (side.curb - side.parking), s * side.curb, 0.0),
                            PARKING,
                            'parking',
                            _jitter(rng, asphalt, 0.08),
                        )
                    )
                # Block base at sidewalk level out to the world's lateral end.
                base_kind = 'grass' if self.district in ('green', 'residential') else 'ground'
                base_label = TERRAIN if base_kind == 'grass' else GROUND
                base_col = (
                    st.grass if base_kind == 'grass' else _jitter(rng, (0.45, 0.43, 0.4), 0.05)
                )
                g.append(
                    GroundPoly(
                        _rect(a, b, s * side.curb, s * Y_FAR, h), base_label, base_kind, base_col
                    )
                )
                # Front zone, sidewalk and grass strip.
                if side.front > 0:
                    kind = side.front_kind
                    lab = {'paving': SIDEWALK, 'grass': TERRAIN, 'gravel': GROUND}[kind]
                    col = {
                        'paving': paving,
                        'grass': st.grass,
                        'gravel': _jitter(rng, (0.5, 0.47, 0.42), 0.05),
                    }[kind]
                    g.append(
                        GroundPoly(
                            _rect(
                                a,
                                b,
                                s * (side.building_line - side.front),
                                s * side.building_line,
                                h,
                            ),
                            lab,
                            'sidewalk' if kind == 'paving' else kind,
                            col,
                        )
                    )
                g.append(
                    GroundPoly(
                        _rect(a, b, s * side.walk0, s * (side.walk0 + side.sidewalk), h),
                        SIDEWALK,
                        'sidewalk',
                        paving,
                    )
                )
                if side.grass > 0:
                    g.append(
                        GroundPoly(
                            _rect(a, b, s * side.curb, s * side.walk0, h),
                            TERRAIN,
                            'grass',
                            st.grass,
                        )
                    )
                # Sidewalks along the cross street at block ends next to a crossing.
                cw = side.sidewalk
                if road.crossing and b == road.crossing[0]:
                    g.append(
                        GroundPoly(
                            _rect(b - cw, b, s * side.curb, s * Y_FAR, h),
                            SIDEWALK,
                            'sidewalk',
                            paving,
                        )
                    )
                if road.crossing and a == road.crossing[1]:
                    g.append(
                        GroundPoly(
                            _rect(a, a + cw, s * side.curb, s * Y_FAR, h),
                            SIDEWALK,
                            'sidewalk',
                            paving,
                        )
                    )
                # Curb faces (vertical, labelled sidewalk as in Cityscapes).
                yc = s * side.curb
                face = np.array([[a, yc, 0], [b, yc, 0], [b, yc, h], [a, yc, h]], float)
                if s < 0:
                    face = face[[1, 0, 3, 2]]  # keep the outward normal towards the road
                g.append(GroundPoly(face, SIDEWALK, 'curb', curb_col))
                if road.crossing and a == road.crossing[1]:
                    ys = sorted((yc, s * Y_FAR))
                    g.append(
                        GroundPoly(
                            np.array(
                                [[a, ys[1], 0], [a, ys[0], 0], [a, ys[0], h], [a, ys[1], h]], float
                            ),
                            SIDEWALK,
                            'curb',
                            curb_col,
                        )
                    )
        # Beyond the T-junction: sidewalk and a base for the closing row of buildings.
        g.append(
            GroundPoly(
                _rect(x1 + 14, x1 + 90, -Y_FAR, Y_FAR, h),
                GROUND,
                'ground',
                _jitter(rng, (0.45, 0.43, 0.4), 0.05),
            )
        )
        g.append(
            GroundPoly(_rect(x1 + 14, x1 + 18, -Y_FAR, Y_FAR, h), SIDEWALK, 'sidewalk', paving)
        )
        g.append(
            GroundPoly(
                np.array(
                    [
                        [x1 + 14, Y_FAR, 0],
                        [x1 + 14, -Y_FAR, 0],
                        [x1 + 14, -Y_FAR, h],
                        [x1 + 14, Y_FAR, h],
                    ],
                    float,
                ),
                SIDEWALK,
                'curb',
                curb_col,
            )
        )

    # ---- ego ----------------------------------------------------------------------------------

    def ego_motion(self, road: RoadLayout) -> EgoMotion:
        rng = self.rng
        lane = int(rng.integers(road.lanes_right)) if road.lanes_right else 0
        speed = float(rng.choice([0.0, rng.uniform(1.0, 14.0)], p=[0.12, 0.88]))
        accel = float(rng.uniform(-1.0, 1.0)) if speed > 2 else 0.0
        self.ego_lane = lane
        self.ego_speed = speed
        return EgoMotion(
            y0=-(lane + 0.5) * road.lane_width + float(rng.normal(0, 0.2)),
            speed=speed,
            accel=accel,
            weave=float(rng.uniform(0.0, 0.25)) * min(1.0, speed / 6.0),
            weave_freq=float(rng.uniform(0.5, 1.5)),
            weave_phase=float(rng.uniform(0, 2 * math.pi)),
            heading=float(rng.normal(0, 0.012)),
            bounce=float(rng.uniform(0.0, 0.004)),
            bounce_freq=float(rng.uniform(6.0, 12.0)),
        )

    # ---- population ---------------------------------------------------------------------------

    def populate(self, scene: Scene, sides: list[_Side]) -> None:
        self.scene = scene
        for side in sides:
            self._buildings(side)
            self._furniture(side)
            self._vegetation(side)
            self._parked(side)
            self._pedestrians(side)
        self._far_row()
        self._traffic()
        self._intersection(sides)

    # buildings -----------------------------------------------------------------------------

    def _facade(self, height_class: str) -> Facade:
        rng = self.rng
        u = rng.uniform
        texture = int(rng.choice([0, 1, 2, 3], p=[0.55, 0.15, 0.18, 0.12]))
        color = _jitter(rng, _pick(rng, _FACADE_COLORS), 0.07)
        if texture == 1:
            color = _jitter(rng, (0.5, 0.28, 0.2), 0.1)
        if texture == 3:
            color = _jitter(rng, (0.5, 0.52, 0.53), 0.08)
        storey = u(2.9, 3.6)
        glass = (u(0.08, 0.22), u(0.1, 0.24), u(0.12, 0.28))
        frame = _jitter(
            rng, _pick(rng, ((0.85, 0.85, 0.82), (0.3, 0.3, 0.3), (0.55, 0.5, 0.45))), 0.05
        )
        spacing = u(2.2, 3.6) if texture != 3 else u(1.3, 2.0)
        win_w = spacing * (u(0.4, 0.6) if texture != 3 else u(0.8, 0.92))
        return Facade(
            color=color,
            window_color=glass,
            frame_color=frame,
            storey=storey,
            ground_floor=storey + u(0.0, 1.2),
            win_w=win_w,
            win_h=storey * (u(0.4, 0.58) if texture != 3 else u(0.65, 0.8)),
            spacing=spacing,
            sill=storey * u(0.22, 0.32),
            shop=bool(rng.random() < (0.55 if height_class == 'city' else 0.15)),
            band=u(0.15, 0.35) if rng.random() < 0.4 else 0.0,
            offset=u(0, spacing),
            texture=texture,
        )

    def _heights(self) -> tuple[float, float]:
        return {
            'city': (13.0, 26.0),
            'residential': (7.0, 15.0),
            'green': (6.0, 11.0),
            'industrial': (6.0, 14.0),
        }[self.district]

    def _add_building(
        self,
        x0: float,
        x1: float,
        y_front: float,
        depth: float,
        sign: int,
        height: float,
        facade: Facade,
    ) -> None:
        """A building whose street facade lies at signed ``y_front`` between x0 and x1."""
        rng = self.rng
        y_back = y_front + sign * depth
        corners = _rect(x0, x1, y_front, y_back, 0.0)[:, :2]
        # Edge 0 of the footprint is the street facade (a pitched roof's ridge runs parallel
        # to it): for buildings on the left it already is, on the right it is edge 2.
        if sign < 0:
            corners = np.roll(corners, -2, axis=0)
        roof = 0.0
        if rng.random() < (0.35 if self.district == 'city' else 0.55) and height < 18:
            roof = min(depth * 0.45, rng.uniform(2.5, 6.0))
        roof_col = _jitter(
            rng, _pick(rng, ((0.38, 0.2, 0.15), (0.25, 0.25, 0.27), (0.45, 0.3, 0.22))), 0.08
        )
        self.scene.buildings.append(Building(corners, height, facade, roof, roof_col))

    def _buildings(self, side: _Side) -> None:
        rng, s = self.rng, side.sign
        lo, hi = self._heights()
        yb = side.building_line
        gap_p = {'city': 0.08, 'residential': 0.3, 'green': 0.4, 'industrial': 0.25}[self.district]
        road = self.scene.road
        for a, b in side.blocks:
            x = a + (side.sidewalk if road.crossing and a == road.crossing[1] else 0.0)
            end = b - (side.sidewalk if road.crossing and b == road.crossing[0] else 0.0)
            first = True
            base_h = rng.uniform(lo, hi)
            while x < end - 3:
                w = rng.uniform(8, 24) if self.district != 'industrial' else rng.uniform(15, 40)
                w = min(w, end - x)
                if not first and rng.random() < gap_p:
                    gap = rng.uniform(3, 12)
                    self._gap(side, x, min(x + gap, end), yb)
                    x += gap
                    continue
                first = False
                setback = (
                    0.0 if self.district == 'city' or rng.random() < 0.5 else rng.uniform(0, 2.5)
                )
                h = float(np.clip(base_h + rng.normal(0, 3.0), lo * 0.8, hi * 1.2))
                depth = rng.uniform(10, 18)
                self._add_building(
                    x, x + w, s * (yb + setback), depth, s, h, self._facade(self.district)
                )
                x += w
            # Along the cross street, facing it: the block's far corner buildings.
            if road.crossing and b == road.crossing[0]:
                xf, facing = end, 1
            elif road.crossing and a == road.crossing[1]:
                xf, facing = a + side.sidewalk, -1
            else:
                continue
            yy = yb + 18 + rng.uniform(0, 6)
            while yy < 90:
                w = rng.uniform(10, 22)
                depth = rng.uniform(10, 16)
                h = float(np.clip(base_h + rng.normal(0, 4.0), lo * 0.8, hi * 1.3))
                xa, xb = (xf - depth, xf) if facing > 0 else (xf, xf + depth)
                corners = _rect(xa, xb, s * yy, s * (yy + w), 0.0)[:, :2]
                self.scene.buildings.append(Building(corners, h, self._facade(self.district)))
                yy += w + (rng.uniform(3, 10) if rng.random() < 0.3 else 0.0)
        # Backyard buildings, visible through gaps and above lower ones.
        for _ in range(int(rng.integers(2, 7))):
            x = rng.uniform(-20, road.x_end - 10)
            yy = yb + rng.uniform(22, 45)
            w = rng.uniform(12, 30)
            h = rng.uniform(lo, hi * 1.3)
            corners = _rect(x, x + w, s * yy, s * (yy + rng.uniform(10, 20)), 0.0)[:, :2]
            self.scene.buildings.append(Building(corners, h, self._facade(self.district)))

    def _gap(self, side: _Side, x0: float, x1: float, yb: float) -> None:
        """Between two buildings: a wall, fence or hedge, trees behind."""
        rng, s = self.rng, side.sign
        kind = _pick(rng, ('wall', 'fence', 'hedge', 'none'))
        if kind != 'none':
            self._edge(kind, x0, x1, s * (yb + 0.5), s)
        for _ in range(int(rng.integers(0, 3))):
            x = rng.uniform(x0, x1)
            self._tree(x, s * (yb + rng.uniform(3, 10)), self.scene.road.curb_height, big=True)

    def _edge(self, kind: str, x0: float, x1: float, y: float, s: int) -> None:
        """A wall, fence or hedge running along x at signed y."""
        rng, h = self.rng, self.scene.road.curb_height
        if x1 - x0 < 0.5:
            return
        if kind == 'wall':
            height, thick = rng.uniform(0.6, 2.2), 0.3
            col = _jitter(
                rng,
                _pick(
                    rng, ((0.6, 0.58, 0.55), (0.5, 0.3, 0.24), (0.7, 0.7, 0.68), (0.42, 0.42, 0.4))
                ),
                0.06,
            )
            label = WALL
        elif kind == 'fence':
            height, thick = rng.uniform(0.9, 1.9), 0.06
            col = _jitter(
                rng,
                _pick(
                    rng,
                    ((0.25, 0.26, 0.25), (0.45, 0.35, 0.25), (0.55, 0.57, 0.58), (0.2, 0.3, 0.22)),
                ),
                0.06,
            )
            label = FENCE
        else:
            height, thick = rng.uniform(0.8, 2.0), rng.uniform(0.6, 1.2)
            col = _jitter(rng, self.style.foliage, 0.1)
            label = VEGETATION
        corners = _rect(x0, x1, y, y + s * thick, 0.0)[:, :2]
        self.scene.blocks.append(Block(corners, h, h + height, label, kind, col))

    # street furniture ---------------------------------------------------------------------------

    def _furniture(self, side: _Side) -> None:
        rng, s, sc = self.rng, side.sign, self.scene
        h = sc.road.curb_height
        yf = side.walk0 + (0.45 if side.grass == 0 else -side.grass / 2)  # furniture line
        x_end = sc.road.x_end
        # Street lights at regular spacing.
        if rng.random() < 0.8:
            spacing = rng.uniform(22, 38)
            x = rng.uniform(-25, -25 + spacing)
            while x < x_end:
                if self._free(side, x, 0.6):
                    sc.lights.append(
                        StreetLight(
                            x,
                            s * yf,
                            h,
                            rng.uniform(6.0, 9.0),
                            -s * math.pi / 2,
                            rng.uniform(0.8, 2.5),
                        )
                    )
                x += spacing
        # Traffic signs.
        for _ in range(int(rng.integers(1, 5))):
            x = rng.uniform(-5, 70)
            if not self._free(side, x, 0.5):
                continue
            plates = [self._plate(rng.uniform(2.1, 2.6))]
            if rng.random() < 0.35:
                plates.append(self._plate(plates[0].z - plates[0].size / 2 - 0.35))
            facing = math.pi if s < 0 or rng.random() < 0.5 else 0.0
            facing += rng.normal(0, 0.15)
            sc.signs.append(
                Sign(x, s * yf, h, plates[0].z + plates[0].size / 2 + 0.05, facing, tuple(plates))
            )
        # Plain poles, bollards, bins, cabinets, advertising columns.
        for _ in range(int(rng.integers(0, 5))):
            x = rng.uniform(-5, 90)
            if not self._free(side, x, 0.4):
                continue
            kind = _pick(rng, ('pole', 'bollards', 'bin', 'cabinet', 'column', 'pole'))
            y = s * yf
            if kind == 'pole':
                sc.poles.append(Pole(x, y, h, rng.uniform(2.5, 4.5), rng.uniform(0.04, 0.07)))
            elif kind == 'bollards':
                for k in range(int(rng.integers(3, 7))):
                    sc.poles.append(
                        Pole(
                            x + 1.5 * k,
                            s * (side.curb + 0.3),
                            h,
                            0.9,
                            0.06,
                            color=(0.35, 0.36, 0.37),
                        )
                    )
            elif kind == 'column':
                sc.poles.append(
                    Pole(
                        x,
                        s * (yf + 0.6),
                        h,
                        rng.uniform(2.8, 3.5),
                        0.6,
                        label=STATIC,
                        color=_jitter(rng, (0.6, 0.55, 0.45), 0.2),
                    )
                )
            else:
                size = (0.6, 0.5, 1.0) if kind == 'bin' else (0.8, 0.4, 1.3)
                col = (0.25, 0.3, 0.28) if kind == 'bin' else (0.55, 0.56, 0.55)
                yy = s * (side.walk0 + side.sidewalk - 0.5 if kind == 'cabinet' else yf)
                corners = _footprint(x, yy, size[0], size[1], 0.0)
                sc.blocks.append(
                    Block(corners, h, h + size[2], STATIC, 'static', _jitter(rng, col, 0.1))
                )
        # Guard rail along the road edge (rare; industrial streets).
        if self.district == 'industrial' and rng.random() < 0.4:
            x0 = rng.uniform(0, 30)
            x1 = x0 + rng.uniform(20, 80)
            yy = s * (side.curb + 0.4)
            corners = _rect(x0, x1, yy, yy + s * 0.08, 0.0)[:, :2]
            sc.blocks.append(
                Block(corners, h + 0.45, h + 0.75, GUARD_RAIL, 'guardrail', (0.62, 0.64, 0.65))
            )
            for x in np.arange(x0, x1, 2.0):
                sc.blocks.append(
                    Block(
                        _footprint(x, yy + s * 0.1, 0.1, 0.1, 0.0),
                        h,
                        h + 0.7,
                        GUARD_RAIL,
                        'guardrail',
                        (0.5, 0.52, 0.53),
                    )
                )
        # Front-zone edge (hedge / fence / wall) along the whole block.
        if side.front_edge != 'none':
            for a, b in side.blocks:
                a2, b2 = max(a, -30.0), b
                # Leave openings (gates, drives).
                x = a2
                while x < b2:
                    run = rng.uniform(6, 25)
                    self._edge(
                        side.front_edge,
                        x,
                        min(x + run, b2),
                        s * (side.walk0 + side.sidewalk + 0.1),
                        s,
                    )
                    x += run + rng.uniform(1.5, 4)
        # Parked two-wheelers on the sidewalk.
        if rng.random() < 0.35:
            x = rng.uniform(2, 40)
            for k in range(int(rng.integers(1, 6))):
                kind = 'bicycle' if rng.random() < 0.8 else 'motorcycle'
                yy = s * (side.walk0 + side.sidewalk - 0.6)
                sc.two_wheelers.append(
                    TwoWheeler(
                        kind,
                        x + 0.7 * k,
                        yy,
                        h,
                        s * math.pi / 2 + rng.normal(0, 0.2),
                        0.0,
                        self._vehicle_color(),
                        None,
                    )
                )

    def _free(self, side: _Side, x: float, r: float) -> bool:
        if not side.furniture.free(x - r, x + r):
            return False
        side.furniture.take(x - r, x + r)
        return True

    def _plate(self, z: float) -> Plate:
        rng = self.rng
        shape = _pick(rng, ('circle', 'circle', 'triangle', 'rect', 'rect', 'diamond', 'octagon'))
        red, white, blue, yellow = (
            (0.75, 0.1, 0.1),
            (0.9, 0.9, 0.88),
            (0.1, 0.3, 0.7),
            (0.9, 0.75, 0.1),
        )
        face, border = {
            'circle': _pick(rng, ((white, red), (blue, white), (white, red))),
            'triangle': (white, red),
            'rect': _pick(
                rng, ((blue, white), (white, (0.1, 0.1, 0.1)), ((0.1, 0.45, 0.2), white))
            ),
            'diamond': (yellow, white),
            'octagon': (red, white),
        }[shape]
        size = rng.uniform(0.55, 0.8)
        return Plate(z, shape, size, face, border)

    # vegetation ---------------------------------------------------------------------------------

    def _tree(self, x: float, y: float, z0: float, big: bool = False) -> None:
        rng = self.rng
        trunk_h = rng.uniform(2.0, 3.5)
        r = rng.uniform(2.0, 3.8) * (1.25 if big else 1.0)
        crowns = []
        for _ in range(int(rng.integers(2, 5))):
            crowns.append(
                Crown(
                    dx=float(rng.normal(0, r * 0.3)),
                    dy=float(rng.normal(0, r * 0.3)),
                    z=float(trunk_h + r * rng.uniform(0.6, 1.3)),
                    radius=float(r * rng.uniform(0.6, 1.0)),
                    seed=int(rng.integers(1 << 30)),
                )
            )
        self.scene.trees.append(
            Tree(
                x,
                y,
                z0,
                trunk_h + r * 0.5,
                rng.uniform(0.12, 0.25),
                tuple(crowns),
                _jitter(rng, self.style.foliage, 0.15),
                _jitter(rng, (0.28, 0.24, 0.2), 0.1),
            )
        )

    def _vegetation(self, side: _Side) -> None:
        rng, s, sc = self.rng, side.sign, self.scene
        h = sc.road.curb_height
        road = sc.road
        if side.trees:
            spacing = rng.uniform(7, 14)
            yt = side.curb + side.grass / 2 if side.grass else side.walk0 + 0.9
            x = rng.uniform(-30, -30 + spacing)
            while x < road.x_end - 5:
                crossing = road.crossing and road.crossing[0] - 3 < x < road.crossing[1] + 3
                if not crossing and self._free(side, x, 0.8):
                    if side.grass == 0:  # tree pit in the paving
                        pit = _rect(x - 0.6, x + 0.6, s * (yt - 0.6), s * (yt + 0.6), h)
                        road.ground.append(GroundPoly(pit, TERRAIN, 'grass', self.style.grass))
                    self._tree(x + rng.normal(0, 0.4), s * yt, h)
                x += spacing * rng.uniform(0.8, 1.2)
        # Front gardens: bushes and trees.
        if side.front > 2.0 and side.front_kind == 'grass':
            for _ in range(int(rng.integers(2, 10))):
                x = rng.uniform(-15, road.x_end)
                yy = side.building_line - rng.uniform(0.8, side.front - 0.5)
                if rng.random() < 0.5:
                    self._tree(x, s * yy, h)
                else:
                    w = rng.uniform(1.0, 3.0)
                    corners = _footprint(x, s * yy, w, rng.uniform(0.8, 1.6), 0.0)
                    sc.blocks.append(
                        Block(
                            corners,
                            h,
                            h + rng.uniform(0.6, 1.8),
                            VEGETATION,
                            'hedge',
                            _jitter(rng, self.style.foliage, 0.12),
                        )
                    )
        # Trees behind the buildings, peeking over the roofs.
        n_back = {'city': (0, 4), 'residential': (4, 12), 'green': (8, 16), 'industrial': (2, 8)}
        lo, hi = n_back[self.district]
        for _ in range(int(rng.integers(lo, hi))):
            x = rng.uniform(-10, road.x_end)
            self._tree(x, s * (side.building_line + rng.uniform(15, 35)), h, big=True)

    # parked vehicles ----------------------------------------------------------------------------

    def _vehicle_color(self) -> Color:
        rng = self.rng
        colors, probs = zip(*_CAR_COLORS, strict=True)
        idx = int(rng.choice(len(colors), p=np.array(probs) / sum(probs)))
        return _jitter(rng, colors[idx], 0.06)

    def _car_dims(self, kind: str) -> tuple[float, float, float]:
        u = self.rng.uniform
        return {
            'car': (u(3.9, 4.9), u(1.72, 1.9), u(1.42, 1.58)),
            'van': (u(4.8, 5.6), u(1.9, 2.05), u(1.9, 2.5)),
            'truck': (u(6.5, 10.0), u(2.3, 2.5), u(3.0, 3.8)),
            'bus': (float(self.rng.choice([12.0, 18.0])), 2.55, u(3.0, 3.2)),
            'tram': (u(25.0, 36.0), u(2.3, 2.65), u(3.3, 3.6)),
        }[kind]

    def _parked(self, side: _Side) -> None:
        rng, s, sc = self.rng, side.sign, self.scene
        if side.parking <= 0:
            return
        road = sc.road
        density = rng.uniform(0.1, 0.6)
        y = s * (side.curb - side.parking / 2)
        for a, b in side.blocks:
            x = max(a, -25.0) + rng.uniform(0, 3)
            end = b - (4.0 if road.crossing and b == road.crossing[0] else 0.0)
            while x < min(end, 140.0):
                kind = rng.choice(['car', 'van', 'truck'], p=[0.9, 0.092, 0.008])
                length, width, height = self._car_dims(kind)
                if x + length > end:
                    break
                # Fewer cars right beside the camera, where each one would fill the frame.
                near = -8.0 < x < 4.0
                if rng.random() < density * (0.5 if near else 1.0):
                    # Cars on the left kerb mostly belong to the oncoming direction.
                    yaw = rng.normal(0, 0.02) + (math.pi if s > 0 and rng.random() < 0.8 else 0.0)
                    sc.vehicles.append(
                        Vehicle(
                            str(kind),
                            x + length / 2,
                            y + s * rng.uniform(-0.1, 0.15),
                            yaw,
                            0.0,
                            length,
                            width,
                            height,
                            self._vehicle_color(),
                            parked=True,
                        )
                    )
                x += length + rng.uniform(0.5, 2.0)

    # pedestrians --------------------------------------------------------------------------------

    def _person(self, x: float, y: float, z0: float, yaw: float, speed: float) -> Person:
        rng = self.rng
        height = float(np.clip(rng.normal(1.72, 0.09), 1.5, 1.95))
        if rng.random() < 0.08:
            height = rng.uniform(1.1, 1.4)  # child
        return Person(
            x,
            y,
            z0,
            yaw,
            speed,
            height,
            shirt=_jitter(rng, _pick(rng, _SHIRTS), 0.1),
            pants=_jitter(rng, _pick(rng, _PANTS), 0.1),
            skin=_jitter(rng, _pick(rng, _SKIN), 0.05),
            hair=_jitter(
                rng,
                _pick(
                    rng, ((0.1, 0.08, 0.06), (0.3, 0.2, 0.12), (0.6, 0.5, 0.3), (0.5, 0.5, 0.5))
                ),
                0.1,
            ),
            phase=float(rng.uniform(0, 2 * math.pi)),
            width=float(rng.uniform(0.4, 0.52)) * height / 1.75,
        )

    def _pedestrians(self, side: _Side) -> None:
        rng, s, sc = self.rng, side.sign, self.scene
        h = sc.road.curb_height
        busy = {'city': (2, 14), 'residential': (0, 6), 'green': (0, 5), 'industrial': (0, 4)}
        lo, hi = busy[self.district]
        n = int(rng.integers(lo, hi))
        y_lo = side.walk0 + min(1.1, side.sidewalk * 0.4)
        y_hi = side.walk0 + side.sidewalk - 0.35
        x = rng.uniform(-2, 10)
        for _ in range(n):
            x += rng.exponential(9.0)
            if x > 80:
                break
            yy = rng.uniform(y_lo, max(y_lo, y_hi))
            walking = rng.random() < 0.75
            yaw = 0.0 if rng.random() < 0.5 else math.pi
            speed = rng.uniform(0.9, 1.6) if walking else 0.0
            if not walking:
                yaw = rng.uniform(-math.pi, math.pi)
            sc.persons.append(self._person(x, s * yy, h, yaw + rng.normal(0, 0.05), speed))
            if rng.random() < 0.3:  # a companion
                sc.persons.append(
                    self._person(
                        x + rng.uniform(-0.4, 0.4),
                        s * (yy - 0.6 if yy - 0.6 > y_lo else yy + 0.6),
                        h,
                        yaw,
                        speed,
                    )
                )

    # moving traffic -----------------------------------------------------------------------------

    def _traffic(self) -> None:
        rng, sc = self.rng, self.scene
        road = sc.road
        lw = road.lane_width
        ego_v = self.ego_speed
        horizon = 1.8  # seconds of snippet around T_REF to stay collision free
        d = self.district
        # Trucks and buses are rare classes: only some scenes have them at all.
        truck_p = (0.2 if d == 'industrial' else 0.1) * (rng.random() < 0.3)
        bus_p = (0.15 if d == 'city' else 0.08) * (rng.random() < 0.5)

        def kind_draw() -> str:
            r = rng.random()
            if r < bus_p:
                return 'bus'
            if r < bus_p + truck_p:
                return 'truck'
            return 'van' if r < bus_p + truck_p + 0.1 else 'car'

        # Same direction: a queue in each lane, moving at the lane's speed.
        for lane in range(road.lanes_right):
            y = -(lane + 0.5) * lw
            speed = float(np.clip(ego_v * rng.uniform(0.7, 1.15) + rng.normal(0, 1.0), 0, 15))
            if ego_v < 0.5 and rng.random() < 0.5:
                speed = 0.0  # waiting at lights together
            gap0 = 8.0 + max(0.0, ego_v - speed) * horizon * 1.6
            if lane == self.ego_lane:
                x = (
                    gap0
                    + rng.exponential(14.0)
                    + (rng.uniform(20, 60) if rng.random() < 0.25 else 0.0)
                )
            else:
                x = rng.uniform(0, 40)
            if lane != self.ego_lane and abs(x) < 7 and abs(y - sc.ego.y0) < 2.5:
                x = 9.0
            while x < 160:
                kind = kind_draw()
                length, width, height = self._car_dims(kind)
                sc.vehicles.append(
                    Vehicle(
                        kind,
                        x + length / 2,
                        y + rng.normal(0, 0.15),
                        rng.normal(0, 0.01),
                        speed,
                        length,
                        width,
                        height,
                        self._vehicle_color()
                        if kind != 'bus'
                        else _jitter(
                            rng,
                            _pick(rng, ((0.85, 0.85, 0.8), (0.8, 0.75, 0.2), (0.2, 0.35, 0.6))),
                            0.05,
                        ),
                    )
                )
                x += length + rng.uniform(8, 25) + speed * rng.uniform(0.8, 2.0)
                if rng.random() < 0.4:
                    x += rng.uniform(15, 50)
        # Oncoming lanes.
        for lane in range(road.lanes_left):
            y = (lane + 0.5) * lw
            if road.tram_y is not None and abs(y - road.tram_y) < 0.5 and rng.random() < 0.4:
                continue  # keep the tram lane clear
            speed = float(rng.uniform(4, 14)) if rng.random() > 0.1 else 0.0
            x = rng.uniform(8, 45)
            while x < 180:
                kind = kind_draw()
                length, width, height = self._car_dims(kind)
                sc.vehicles.append(
                    Vehicle(
                        kind,
                        x + length / 2,
                        y + rng.normal(0, 0.15),
                        math.pi + rng.normal(0, 0.01),
                        speed,
                        length,
                        width,
                        height,
                        self._vehicle_color()
                        if kind != 'bus'
                        else _jitter(rng, (0.85, 0.85, 0.8), 0.05),
                    )
                )
                x += length + rng.uniform(10, 35) + speed * rng.uniform(0.8, 2.0)
        # A tram on its track.
        if road.tram_y is not None and rng.random() < 0.85:
            length, width, height = self._car_dims('tram')
            towards = rng.random() < 0.6
            speed = float(rng.uniform(0, 12))
            x = rng.uniform(6, 45) + length / 2
            y = road.tram_y
            # Clear oncoming cars out of the tram's way.
            sc.vehicles = [v for v in sc.vehicles if v.parked or abs(v.y - y) > 1.5]
            sc.vehicles.append(
                Vehicle(
                    'tram',
                    x,
                    y,
                    math.pi if towards else 0.0,
                    speed,
                    length,
                    width,
                    height,
                    _jitter(
                        rng,
                        _pick(
                            rng,
                            (
                                (0.85, 0.82, 0.7),
                                (0.8, 0.15, 0.1),
                                (0.85, 0.85, 0.85),
                                (0.2, 0.45, 0.7),
                            ),
                        ),
                        0.04,
                    ),
                )
            )
        # Cyclists and motorcyclists near the right edge of the ego direction.
        n_riders = int(rng.choice([0, 1, 2, 3], p=[0.55, 0.25, 0.12, 0.08]))
        for _ in range(n_riders):
            kind = 'bicycle' if rng.random() < 0.7 else 'motorcycle'
            towards = rng.random() < 0.35 and road.lanes_left > 0
            if kind == 'bicycle':
                speed = float(rng.uniform(3, 7))
                edge = (
                    (road.edge_left - (2.4 if sc.road.lanes_left else 0) - 0.8)
                    if towards
                    else (road.edge_right + 0.8 + self._parking_width(-1))
                )
            else:
                speed = float(rng.uniform(5, 13))
                edge = (lw * 0.5 + 0.7) if towards else -(road.lanes_right - 0.5) * lw - 0.9
            if road.tram_y is not None and abs(edge - road.tram_y) < 2.0:
                continue  # the tram's lane stays clear
            rel = max(0.0, ego_v - speed) * horizon * 1.6
            x = rng.uniform(8 + rel, 50 + rel)
            yaw = math.pi if towards else 0.0
            sc.vehicles = [
                v
                for v in sc.vehicles
                if v.parked or not (abs(v.y - edge) < 1.8 and abs(v.x - x) < v.length / 2 + 4)
            ]
            rider = self._person(0, 0, 0, yaw, 0.0)
            rider.label = RIDER
            sc.two_wheelers.append(
                TwoWheeler(
                    kind,
                    x,
                    edge,
                    0.0,
                    yaw + rng.normal(0, 0.02),
                    speed,
                    self._vehicle_color(),
                    rider,
                )
            )
        # A motorcycle parked at the curb now and then.
        if rng.random() < 0.12:
            x = rng.uniform(5, 40)
            y = road.edge_right + 0.6
            sc.vehicles = [v for v in sc.vehicles if not (abs(v.y - y) < 2 and abs(v.x - x) < 4)]
            sc.two_wheelers.append(
                TwoWheeler(
                    'motorcycle', x, y, 0.0, rng.normal(0, 0.3), 0.0, self._vehicle_color(), None
                )
            )

    def _parking_width(self, sign: int) -> float:
        road = self.scene.road
        lanes = road.lanes_right if sign < 0 else road.lanes_left
        return abs(road.edge_right if sign < 0 else road.edge_left) - lanes * road.lane_width

    def _intersection(self, sides: list[_Side]) -> None:
        rng, sc = self.rng, self.scene
        road = sc.road
        h = road.curb_height
        if road.crossing is None:
            return
        c0, c1 = road.crossing
        state = int(rng.integers(4))
        red = state in (0, 3)  # red for the main road: cross traffic and zebra may move
        if red:
            # Main-road traffic must not be in the junction or on the zebra during the snippet.
            lo = (self.zebra if self.zebra is not None else c0) - 3.0
            t0, t1 = 0.0, (NUM_FRAMES - 1) / FPS

            def clear(o) -> bool:
                if getattr(o, 'parked', False) or abs(math.sin(o.yaw)) > 0.5:
                    return True
                half = getattr(o, 'length', 2.0) / 2
                xa, xb = o.pose(t0)[0], o.pose(t1)[0]
                return max(xa, xb) + half < lo or min(xa, xb) - half > c1 + 1.0

            sc.vehicles = [v for v in sc.vehicles if clear(v)]
            sc.two_wheelers = [w for w in sc.two_wheelers if w.speed == 0 or clear(w)]
        # Traffic lights at the near corners (facing the ego car) and the far ones.
        for side in sides:
            s = side.sign
            y = s * (side.curb + 0.5)
            arm = 0.0
            if s < 0 and rng.random() < 0.5:
                arm = min(side.curb - 1.0, rng.uniform(3.0, 6.5))
            sc.traffic_lights.append(
                TrafficLight(
                    c0 - 1.0,
                    y,
                    h,
                    2.4 if not arm else 5.4,
                    math.pi,
                    state,
                    rng.uniform(1.8, 2.4),
                    arm_length=arm,
                )
            )
            if rng.random() < 0.7:
                sc.traffic_lights.append(
                    TrafficLight(c1 + 1.0, y, h, 3.2, math.pi, state, rng.uniform(2.2, 2.6))
                )
            # Pedestrian lights facing across the street, cross traffic lights facing sideways.
            if rng.random() < 0.6:
                sc.traffic_lights.append(
                    TrafficLight(c0 - 3.5, y, h, 2.6, -s * math.pi / 2, 0, 2.0, pedestrian=True)
                )
            if rng.random() < 0.6:
                sc.traffic_lights.append(
                    TrafficLight(
                        c1 + 1.2, s * (side.curb + 1.0), h, 3.0, -s * math.pi / 2 + math.pi, 2, 2.2
                    )
                )
            # Street-name / direction signs at the corner.
            if rng.random() < 0.7:
                pl = Plate(2.6, 'rect', 0.7, (0.92, 0.92, 0.9), (0.1, 0.1, 0.1))
                sc.signs.append(Sign(c0 - 0.5, s * (side.curb + 1.5), h, 3.0, math.pi, (pl,)))
        # Cross traffic, stopped or moving, and pedestrians on the zebra.
        # One speed per direction and a minimum spacing, so cross traffic never overlaps.
        speeds = {k: float(rng.uniform(0, 10)) if red else 0.0 for k in (-1, 1)}
        taken: list[tuple[int, float, float]] = []
        for _ in range(int(rng.integers(0, 4))):
            s = 1 if rng.random() < 0.5 else -1
            kind = 'car' if rng.random() < 0.85 else 'truck'
            length, width, height = self._car_dims(kind)
            x = c0 + (c1 - c0) * (0.3 if s > 0 else 0.7)
            edge = road.edge_left if s < 0 else -road.edge_right
            y = -s * rng.uniform(edge + 4 + length / 2, 60)
            if any(k == s and abs(y - yy) < (length + ll) / 2 + 2 for k, yy, ll in taken):
                continue
            taken.append((s, y, length))
            speed = speeds[s]
            sc.vehicles.append(
                Vehicle(
                    kind,
                    x,
                    y,
                    s * math.pi / 2,
                    speed,
                    length,
                    width,
                    height,
                    self._vehicle_color(),
                )
            )
        ego_travel = self.ego_speed * (NUM_FRAMES / FPS) + 6
        if red and self.zebra is not None and self.zebra > ego_travel + 4:
            for _ in range(int(rng.integers(0, 6))):
                s = 1 if rng.random() < 0.5 else -1
                y = rng.uniform(road.edge_right, road.edge_left)
                sc.persons.append(
                    self._person(
                        self.zebra + rng.uniform(-1.2, 1.2),
                        y,
                        0.0,
                        s * math.pi / 2,
                        rng.uniform(0.9, 1.6),
                    )
                )

    def _far_row(self) -> None:
        """A closing row of buildings beyond the T-junction at the end of the street."""
        rng, sc = self.rng, self.scene
        x = sc.road.x_end + 18
        lo, hi = self._heights()
        y = -Y_FAR
        while y < Y_FAR:
            w = rng.uniform(10, 25)
            corners = _rect(x, x + 15, y, y + w, 0.0)[:, :2]
            sc.buildings.append(
                Building(corners, rng.uniform(lo, hi * 1.2), self._facade(self.district))
            )
            y += w
        for _ in range(int(rng.integers(0, 6))):
            self._tree(x - 2, rng.uniform(-30, 30), sc.road.curb_height, big=True)
