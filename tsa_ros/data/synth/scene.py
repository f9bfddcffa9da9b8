"""The scene: plain data that is the contract between the world sampler and the renderer.

World ``x`` runs along the road (the ego car drives towards ``+x``), ``y`` points to the left
and ``z`` up, in metres; traffic keeps right, so the ego car's lanes lie at ``y < 0``. Frame
``f`` shows the world at ``t = f / FPS`` seconds; road users are placed relative to the ego
car at the annotated frame (``T_REF``), where the ego car stands at ``x = 0``. Static objects
are plain data; moving ones know their pose at time ``t``.

:mod:`~tsa_ros.data.synth.world` fills a :class:`Scene`, :mod:`~tsa_ros.data.synth.render`
turns it into pixels; neither reaches into the other.
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
