"""Procedural street world for the synthetic Cityscapes-like data set: scene sampling.

:func:`sample_scene` draws everything a 30-frame Cityscapes snippet needs from one random
generator, in a fixed order: the look (:func:`sample_style`), the district, the camera
jitter and the bonnet, the street layout (:mod:`~tsa_ros.data.synth.layout`), the ego
motion and the population (:mod:`~tsa_ros.data.synth.population`). A scene is a pure
description (:mod:`~tsa_ros.data.synth.scene`, re-exported here) and
:func:`tsa_ros.data.synth.render.render_frame` turns it into pixels.

Time: frame ``f`` shows the world at ``t = f / FPS`` seconds. Road users are placed relative
to the ego car at the annotated frame 19 (``T_REF``), where the ego car stands at ``x = 0``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from tsa_ros.data.camera import CameraModel
from tsa_ros.data.synth.layout import jitter, pick, sample_street
from tsa_ros.data.synth.population import Population
from tsa_ros.data.synth.scene import (
    ANNOTATED_FRAME,
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    EGO_VEHICLE,
    FENCE,
    FPS,
    GROUND,
    GUARD_RAIL,
    LABEL_IDS,
    MOTORCYCLE,
    NUM_FRAMES,
    PARKING,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIDEWALK,
    SKY,
    STATIC,
    T_REF,
    TERRAIN,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    TRAIN,
    TRUCK,
    VEGETATION,
    WALL,
    Block,
    Building,
    Color,
    Crown,
    EgoMotion,
    Facade,
    GroundPoly,
    Hood,
    Marking,
    Person,
    Plate,
    Pole,
    RoadLayout,
    Scene,
    SceneStyle,
    Sign,
    StreetLight,
    TrafficLight,
    Tree,
    TwoWheeler,
    Vehicle,
)

__all__ = [
    'ANNOTATED_FRAME',
    'BICYCLE',
    'BUILDING',
    'BUS',
    'Block',
    'Building',
    'CAR',
    'Color',
    'Crown',
    'EGO_VEHICLE',
    'EgoMotion',
    'FENCE',
    'FPS',
    'Facade',
    'GROUND',
    'GUARD_RAIL',
    'GroundPoly',
    'Hood',
    'LABEL_IDS',
    'MOTORCYCLE',
    'Marking',
    'NUM_FRAMES',
    'PARKING',
    'PERSON',
    'POLE',
    'Person',
    'Plate',
    'Pole',
    'RIDER',
    'ROAD',
    'RoadLayout',
    'SIDEWALK',
    'SKY',
    'STATIC',
    'Scene',
    'SceneStyle',
    'Sign',
    'StreetLight',
    'TERRAIN',
    'TRAFFIC_LIGHT',
    'TRAFFIC_SIGN',
    'TRAIN',
    'TRUCK',
    'T_REF',
    'TrafficLight',
    'Tree',
    'TwoWheeler',
    'VEGETATION',
    'Vehicle',
    'WALL',
    'sample_scene',
    'sample_style',
]


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
        color=jitter(
            rng,
            pick(rng, ((0.06, 0.06, 0.07), (0.5, 0.51, 0.53), (0.8, 0.8, 0.8), (0.12, 0.14, 0.2))),
            0.05,
        ),
        reflect=float(rng.uniform(0.15, 0.45)),
    )
    street = sample_street(rng, district, style)
    population = Population(rng, district, style)
    ego = population.ego_motion(street.road)
    scene = Scene(
        seed=seed,
        style=style,
        district=district,
        camera=cam,
        ego=ego,
        road=street.road,
        hood=hood,
    )
    population.populate(scene, street)
    return scene
