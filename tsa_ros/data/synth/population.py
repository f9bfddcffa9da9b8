"""The population of a street: buildings, street furniture, vegetation, road users, motion.

:class:`Population` draws, from the same generator and after the layout, the ego car's
motion and then everything that stands or moves on the :class:`~.layout.Street`: buildings
along the building lines and a closing row beyond the T-junction, walls, fences and hedges,
street lights, signs, poles and bins, trees, parked and moving vehicles, cyclists,
pedestrians and the traffic lights of the junction.
"""

from __future__ import annotations

import math

import numpy as np

from tsa_ros.data.synth.layout import Y_FAR, Side, Street, jitter, pick, rect
from tsa_ros.data.synth.scene import (
    FENCE,
    FPS,
    GUARD_RAIL,
    NUM_FRAMES,
    RIDER,
    STATIC,
    TERRAIN,
    VEGETATION,
    WALL,
    Block,
    Building,
    Color,
    Crown,
    EgoMotion,
    Facade,
    GroundPoly,
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


def footprint(cx: float, cy: float, length: float, width: float, yaw: float) -> np.ndarray:
    """Oriented rectangle (4, 2), counter-clockwise seen from above."""
    cos_yaw, sin_yaw = math.cos(yaw), math.sin(yaw)
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * [
        length / 2,
        width / 2,
    ]
    rot = np.array([[cos_yaw, -sin_yaw], [sin_yaw, cos_yaw]])
    return half @ rot.T + [cx, cy]


class Population:
    """Samples the ego motion, then fills a scene piece by piece (one generator, fixed order)."""

    def __init__(self, rng: np.random.Generator, district: str, style: SceneStyle) -> None:
        self.rng = rng
        self.district = district
        self.style = style
        # Set by ego_motion (the ego lane's traffic keeps clear of the ego car) and populate.
        self.ego_lane = 0
        self.ego_speed = 0.0
        self.zebra: float | None = None

    # ---- ego ----------------------------------------------------------------------------------

    def ego_motion(self, road: RoadLayout) -> EgoMotion:
        """The ego car's path along one of its lanes (drawn before the population)."""
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

    def populate(self, scene: Scene, street: Street) -> None:
        """Fill ``scene`` (whose road is ``street.road``) with everything on the street."""
        self.scene = scene
        self.zebra = street.zebra
        for side in street.sides:
            self._buildings(side)
            self._furniture(side)
            self._vegetation(side)
            self._parked(side)
            self._pedestrians(side)
        self._far_row()
        self._traffic()
        self._intersection(street.sides)

    # buildings -----------------------------------------------------------------------------

    def _facade(self, height_class: str) -> Facade:
        rng = self.rng
        uniform = rng.uniform
        texture = int(rng.choice([0, 1, 2, 3], p=[0.55, 0.15, 0.18, 0.12]))
        color = jitter(rng, pick(rng, _FACADE_COLORS), 0.07)
        if texture == 1:
            color = jitter(rng, (0.5, 0.28, 0.2), 0.1)
        if texture == 3:
            color = jitter(rng, (0.5, 0.52, 0.53), 0.08)
        storey = uniform(2.9, 3.6)
        glass = (uniform(0.08, 0.22), uniform(0.1, 0.24), uniform(0.12, 0.28))
        frame = jitter(
            rng, pick(rng, ((0.85, 0.85, 0.82), (0.3, 0.3, 0.3), (0.55, 0.5, 0.45))), 0.05
        )
        spacing = uniform(2.2, 3.6) if texture != 3 else uniform(1.3, 2.0)
        win_w = spacing * (uniform(0.4, 0.6) if texture != 3 else uniform(0.8, 0.92))
        return Facade(
            color=color,
            window_color=glass,
            frame_color=frame,
            storey=storey,
            ground_floor=storey + uniform(0.0, 1.2),
            win_w=win_w,
            win_h=storey * (uniform(0.4, 0.58) if texture != 3 else uniform(0.65, 0.8)),
            spacing=spacing,
            sill=storey * uniform(0.22, 0.32),
            shop=bool(rng.random() < (0.55 if height_class == 'city' else 0.15)),
            band=uniform(0.15, 0.35) if rng.random() < 0.4 else 0.0,
            offset=uniform(0, spacing),
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
        corners = rect(x0, x1, y_front, y_back, 0.0)[:, :2]
        # Edge 0 of the footprint is the street facade (a pitched roof's ridge runs parallel
        # to it): for buildings on the left it already is, on the right it is edge 2.
        if sign < 0:
            corners = np.roll(corners, -2, axis=0)
        roof = 0.0
        if rng.random() < (0.35 if self.district == 'city' else 0.55) and height < 18:
            roof = min(depth * 0.45, rng.uniform(2.5, 6.0))
        roof_col = jitter(
            rng, pick(rng, ((0.38, 0.2, 0.15), (0.25, 0.25, 0.27), (0.45, 0.3, 0.22))), 0.08
        )
        self.scene.buildings.append(Building(corners, height, facade, roof, roof_col))

    def _buildings(self, side: Side) -> None:
        rng, sign = self.rng, side.sign
        lo, hi = self._heights()
        building_y = side.building_line
        gap_p = {'city': 0.08, 'residential': 0.3, 'green': 0.4, 'industrial': 0.25}[self.district]
        road = self.scene.road
        for block_start, block_end in side.blocks:
            x = block_start + (
                side.sidewalk if road.crossing and block_start == road.crossing[1] else 0.0
            )
            end = block_end - (
                side.sidewalk if road.crossing and block_end == road.crossing[0] else 0.0
            )
            first = True
            base_h = rng.uniform(lo, hi)
            while x < end - 3:
                width = (
                    rng.uniform(8, 24) if self.district != 'industrial' else rng.uniform(15, 40)
                )
                width = min(width, end - x)
                if not first and rng.random() < gap_p:
                    gap = rng.uniform(3, 12)
                    self._gap(side, x, min(x + gap, end), building_y)
                    x += gap
                    continue
                first = False
                setback = (
                    0.0 if self.district == 'city' or rng.random() < 0.5 else rng.uniform(0, 2.5)
                )
                height = float(np.clip(base_h + rng.normal(0, 3.0), lo * 0.8, hi * 1.2))
                depth = rng.uniform(10, 18)
                self._add_building(
                    x,
                    x + width,
                    sign * (building_y + setback),
                    depth,
                    sign,
                    height,
                    self._facade(self.district),
                )
                x += width
            # Along the cross street, facing it: the block's far corner buildings.
            if road.crossing and block_end == road.crossing[0]:
                corner_x, facing = end, 1
            elif road.crossing and block_start == road.crossing[1]:
                corner_x, facing = block_start + side.sidewalk, -1
            else:
                continue
            y = building_y + 18 + rng.uniform(0, 6)
            while y < 90:
                width = rng.uniform(10, 22)
                depth = rng.uniform(10, 16)
                height = float(np.clip(base_h + rng.normal(0, 4.0), lo * 0.8, hi * 1.3))
                xa, xb = (
                    (corner_x - depth, corner_x) if facing > 0 else (corner_x, corner_x + depth)
                )
                corners = rect(xa, xb, sign * y, sign * (y + width), 0.0)[:, :2]
                self.scene.buildings.append(Building(corners, height, self._facade(self.district)))
                y += width + (rng.uniform(3, 10) if rng.random() < 0.3 else 0.0)
        # Backyard buildings, visible through gaps and above lower ones.
        for _ in range(int(rng.integers(2, 7))):
            x = rng.uniform(-20, road.x_end - 10)
            y = building_y + rng.uniform(22, 45)
            width = rng.uniform(12, 30)
            height = rng.uniform(lo, hi * 1.3)
            corners = rect(x, x + width, sign * y, sign * (y + rng.uniform(10, 20)), 0.0)[:, :2]
            self.scene.buildings.append(Building(corners, height, self._facade(self.district)))

    def _gap(self, side: Side, x0: float, x1: float, building_y: float) -> None:
        """Between two buildings: a wall, fence or hedge, trees behind."""
        rng, sign = self.rng, side.sign
        kind = pick(rng, ('wall', 'fence', 'hedge', 'none'))
        if kind != 'none':
            self._edge(kind, x0, x1, sign * (building_y + 0.5), sign)
        for _ in range(int(rng.integers(0, 3))):
            x = rng.uniform(x0, x1)
            self._tree(
                x, sign * (building_y + rng.uniform(3, 10)), self.scene.road.curb_height, big=True
            )

    def _edge(self, kind: str, x0: float, x1: float, y: float, sign: int) -> None:
        """A wall, fence or hedge running along x at signed y."""
        rng, curb_h = self.rng, self.scene.road.curb_height
        if x1 - x0 < 0.5:
            return
        if kind == 'wall':
            height, thick = rng.uniform(0.6, 2.2), 0.3
            col = jitter(
                rng,
                pick(
                    rng, ((0.6, 0.58, 0.55), (0.5, 0.3, 0.24), (0.7, 0.7, 0.68), (0.42, 0.42, 0.4))
                ),
                0.06,
            )
            label = WALL
        elif kind == 'fence':
            height, thick = rng.uniform(0.9, 1.9), 0.06
            col = jitter(
                rng,
                pick(
                    rng,
                    ((0.25, 0.26, 0.25), (0.45, 0.35, 0.25), (0.55, 0.57, 0.58), (0.2, 0.3, 0.22)),
                ),
                0.06,
            )
            label = FENCE
        else:
            height, thick = rng.uniform(0.8, 2.0), rng.uniform(0.6, 1.2)
            col = jitter(rng, self.style.foliage, 0.1)
            label = VEGETATION
        corners = rect(x0, x1, y, y + sign * thick, 0.0)[:, :2]
        self.scene.blocks.append(Block(corners, curb_h, curb_h + height, label, kind, col))

    # street furniture ---------------------------------------------------------------------------

    def _furniture(self, side: Side) -> None:
        rng, sign, scene = self.rng, side.sign, self.scene
        curb_h = scene.road.curb_height
        furniture_y = side.walk0 + (0.45 if side.grass == 0 else -side.grass / 2)
        x_end = scene.road.x_end
        # Street lights at regular spacing.
        if rng.random() < 0.8:
            spacing = rng.uniform(22, 38)
            x = rng.uniform(-25, -25 + spacing)
            while x < x_end:
                if self._free(side, x, 0.6):
                    scene.lights.append(
                        StreetLight(
                            x,
                            sign * furniture_y,
                            curb_h,
                            rng.uniform(6.0, 9.0),
                            -sign * math.pi / 2,
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
            facing = math.pi if sign < 0 or rng.random() < 0.5 else 0.0
            facing += rng.normal(0, 0.15)
            scene.signs.append(
                Sign(
                    x,
                    sign * furniture_y,
                    curb_h,
                    plates[0].z + plates[0].size / 2 + 0.05,
                    facing,
                    tuple(plates),
                )
            )
        # Plain poles, bollards, bins, cabinets, advertising columns.
        for _ in range(int(rng.integers(0, 5))):
            x = rng.uniform(-5, 90)
            if not self._free(side, x, 0.4):
                continue
            kind = pick(rng, ('pole', 'bollards', 'bin', 'cabinet', 'column', 'pole'))
            y = sign * furniture_y
            if kind == 'pole':
                scene.poles.append(
                    Pole(x, y, curb_h, rng.uniform(2.5, 4.5), rng.uniform(0.04, 0.07))
                )
            elif kind == 'bollards':
                for k in range(int(rng.integers(3, 7))):
                    scene.poles.append(
                        Pole(
                            x + 1.5 * k,
                            sign * (side.curb + 0.3),
                            curb_h,
                            0.9,
                            0.06,
                            color=(0.35, 0.36, 0.37),
                        )
                    )
            elif kind == 'column':
                scene.poles.append(
                    Pole(
                        x,
                        sign * (furniture_y + 0.6),
                        curb_h,
                        rng.uniform(2.8, 3.5),
                        0.6,
                        label=STATIC,
                        color=jitter(rng, (0.6, 0.55, 0.45), 0.2),
                    )
                )
            else:
                size = (0.6, 0.5, 1.0) if kind == 'bin' else (0.8, 0.4, 1.3)
                col = (0.25, 0.3, 0.28) if kind == 'bin' else (0.55, 0.56, 0.55)
                box_y = sign * (
                    side.walk0 + side.sidewalk - 0.5 if kind == 'cabinet' else furniture_y
                )
                corners = footprint(x, box_y, size[0], size[1], 0.0)
                scene.blocks.append(
                    Block(
                        corners, curb_h, curb_h + size[2], STATIC, 'static', jitter(rng, col, 0.1)
                    )
                )
        # Guard rail along the road edge (rare; industrial streets).
        if self.district == 'industrial' and rng.random() < 0.4:
            x0 = rng.uniform(0, 30)
            x1 = x0 + rng.uniform(20, 80)
            rail_y = sign * (side.curb + 0.4)
            corners = rect(x0, x1, rail_y, rail_y + sign * 0.08, 0.0)[:, :2]
            scene.blocks.append(
                Block(
                    corners,
                    curb_h + 0.45,
                    curb_h + 0.75,
                    GUARD_RAIL,
                    'guardrail',
                    (0.62, 0.64, 0.65),
                )
            )
            for x in np.arange(x0, x1, 2.0):
                scene.blocks.append(
                    Block(
                        footprint(x, rail_y + sign * 0.1, 0.1, 0.1, 0.0),
                        curb_h,
                        curb_h + 0.7,
                        GUARD_RAIL,
                        'guardrail',
                        (0.5, 0.52, 0.53),
                    )
                )
        # Front-zone edge (hedge / fence / wall) along the whole block.
        if side.front_edge != 'none':
            for block_start, block_end in side.blocks:
                run_start, run_end = max(block_start, -30.0), block_end
                # Leave openings (gates, drives).
                x = run_start
                while x < run_end:
                    run = rng.uniform(6, 25)
                    self._edge(
                        side.front_edge,
                        x,
                        min(x + run, run_end),
                        sign * (side.walk0 + side.sidewalk + 0.1),
                        sign,
                    )
                    x += run + rng.uniform(1.5, 4)
        # Parked two-wheelers on the sidewalk.
        if rng.random() < 0.35:
            x = rng.uniform(2, 40)
            for k in range(int(rng.integers(1, 6))):
                kind = 'bicycle' if rng.random() < 0.8 else 'motorcycle'
                park_y = sign * (side.walk0 + side.sidewalk - 0.6)
                scene.two_wheelers.append(
                    TwoWheeler(
                        kind,
                        x + 0.7 * k,
                        park_y,
                        curb_h,
                        sign * math.pi / 2 + rng.normal(0, 0.2),
                        0.0,
                        self._vehicle_color(),
                        None,
                    )
                )

    def _free(self, side: Side, x: float, radius: float) -> bool:
        if not side.furniture.free(x - radius, x + radius):
            return False
        side.furniture.take(x - radius, x + radius)
        return True

    def _plate(self, z: float) -> Plate:
        rng = self.rng
        shape = pick(rng, ('circle', 'circle', 'triangle', 'rect', 'rect', 'diamond', 'octagon'))
        red, white, blue, yellow = (
            (0.75, 0.1, 0.1),
            (0.9, 0.9, 0.88),
            (0.1, 0.3, 0.7),
            (0.9, 0.75, 0.1),
        )
        face, border = {
            'circle': pick(rng, ((white, red), (blue, white), (white, red))),
            'triangle': (white, red),
            'rect': pick(
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
        crown_r = rng.uniform(2.0, 3.8) * (1.25 if big else 1.0)
        crowns = []
        for _ in range(int(rng.integers(2, 5))):
            crowns.append(
                Crown(
                    dx=float(rng.normal(0, crown_r * 0.3)),
                    dy=float(rng.normal(0, crown_r * 0.3)),
                    z=float(trunk_h + crown_r * rng.uniform(0.6, 1.3)),
                    radius=float(crown_r * rng.uniform(0.6, 1.0)),
                    seed=int(rng.integers(1 << 30)),
                )
            )
        self.scene.trees.append(
            Tree(
                x,
                y,
                z0,
                trunk_h + crown_r * 0.5,
                rng.uniform(0.12, 0.25),
                tuple(crowns),
                jitter(rng, self.style.foliage, 0.15),
                jitter(rng, (0.28, 0.24, 0.2), 0.1),
            )
        )

    def _vegetation(self, side: Side) -> None:
        rng, sign, scene = self.rng, side.sign, self.scene
        curb_h = scene.road.curb_height
        road = scene.road
        if side.trees:
            spacing = rng.uniform(7, 14)
            tree_y = side.curb + side.grass / 2 if side.grass else side.walk0 + 0.9
            x = rng.uniform(-30, -30 + spacing)
            while x < road.x_end - 5:
                crossing = road.crossing and road.crossing[0] - 3 < x < road.crossing[1] + 3
                if not crossing and self._free(side, x, 0.8):
                    if side.grass == 0:  # tree pit in the paving
                        pit = rect(
                            x - 0.6, x + 0.6, sign * (tree_y - 0.6), sign * (tree_y + 0.6), curb_h
                        )
                        road.ground.append(GroundPoly(pit, TERRAIN, 'grass', self.style.grass))
                    self._tree(x + rng.normal(0, 0.4), sign * tree_y, curb_h)
                x += spacing * rng.uniform(0.8, 1.2)
        # Front gardens: bushes and trees.
        if side.front > 2.0 and side.front_kind == 'grass':
            for _ in range(int(rng.integers(2, 10))):
                x = rng.uniform(-15, road.x_end)
                y_bush = side.building_line - rng.uniform(0.8, side.front - 0.5)
                if rng.random() < 0.5:
                    self._tree(x, sign * y_bush, curb_h)
                else:
                    width = rng.uniform(1.0, 3.0)
                    corners = footprint(x, sign * y_bush, width, rng.uniform(0.8, 1.6), 0.0)
                    scene.blocks.append(
                        Block(
                            corners,
                            curb_h,
                            curb_h + rng.uniform(0.6, 1.8),
                            VEGETATION,
                            'hedge',
                            jitter(rng, self.style.foliage, 0.12),
                        )
                    )
        # Trees behind the buildings, peeking over the roofs.
        n_back = {'city': (0, 4), 'residential': (4, 12), 'green': (8, 16), 'industrial': (2, 8)}
        lo, hi = n_back[self.district]
        for _ in range(int(rng.integers(lo, hi))):
            x = rng.uniform(-10, road.x_end)
            self._tree(x, sign * (side.building_line + rng.uniform(15, 35)), curb_h, big=True)

    # parked vehicles ----------------------------------------------------------------------------

    def _vehicle_color(self) -> Color:
        rng = self.rng
        colors, probs = zip(*_CAR_COLORS, strict=True)
        idx = int(rng.choice(len(colors), p=np.array(probs) / sum(probs)))
        return jitter(rng, colors[idx], 0.06)

    def _car_dims(self, kind: str) -> tuple[float, float, float]:
        uniform = self.rng.uniform
        return {
            'car': (uniform(3.9, 4.9), uniform(1.72, 1.9), uniform(1.42, 1.58)),
            'van': (uniform(4.8, 5.6), uniform(1.9, 2.05), uniform(1.9, 2.5)),
            'truck': (uniform(6.5, 10.0), uniform(2.3, 2.5), uniform(3.0, 3.8)),
            'bus': (float(self.rng.choice([12.0, 18.0])), 2.55, uniform(3.0, 3.2)),
            'tram': (uniform(25.0, 36.0), uniform(2.3, 2.65), uniform(3.3, 3.6)),
        }[kind]

    def _parked(self, side: Side) -> None:
        rng, sign, scene = self.rng, side.sign, self.scene
        if side.parking <= 0:
            return
        road = scene.road
        density = rng.uniform(0.1, 0.6)
        y = sign * (side.curb - side.parking / 2)
        for block_start, block_end in side.blocks:
            x = max(block_start, -25.0) + rng.uniform(0, 3)
            end = block_end - (4.0 if road.crossing and block_end == road.crossing[0] else 0.0)
            while x < min(end, 140.0):
                kind = rng.choice(['car', 'van', 'truck'], p=[0.9, 0.092, 0.008])
                length, width, height = self._car_dims(kind)
                if x + length > end:
                    break
                # Fewer cars right beside the camera, where each one would fill the frame.
                near = -8.0 < x < 4.0
                if rng.random() < density * (0.5 if near else 1.0):
                    # Cars on the left kerb mostly belong to the oncoming direction.
                    yaw = rng.normal(0, 0.02) + (
                        math.pi if sign > 0 and rng.random() < 0.8 else 0.0
                    )
                    scene.vehicles.append(
                        Vehicle(
                            str(kind),
                            x + length / 2,
                            y + sign * rng.uniform(-0.1, 0.15),
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
            shirt=jitter(rng, pick(rng, _SHIRTS), 0.1),
            pants=jitter(rng, pick(rng, _PANTS), 0.1),
            skin=jitter(rng, pick(rng, _SKIN), 0.05),
            hair=jitter(
                rng,
                pick(rng, ((0.1, 0.08, 0.06), (0.3, 0.2, 0.12), (0.6, 0.5, 0.3), (0.5, 0.5, 0.5))),
                0.1,
            ),
            phase=float(rng.uniform(0, 2 * math.pi)),
            width=float(rng.uniform(0.4, 0.52)) * height / 1.75,
        )

    def _pedestrians(self, side: Side) -> None:
        rng, sign, scene = self.rng, side.sign, self.scene
        curb_h = scene.road.curb_height
        busy = {'city': (2, 14), 'residential': (0, 6), 'green': (0, 5), 'industrial': (0, 4)}
        lo, hi = busy[self.district]
        count = int(rng.integers(lo, hi))
        y_lo = side.walk0 + min(1.1, side.sidewalk * 0.4)
        y_hi = side.walk0 + side.sidewalk - 0.35
        x = rng.uniform(-2, 10)
        for _ in range(count):
            x += rng.exponential(9.0)
            if x > 80:
                break
            y_walk = rng.uniform(y_lo, max(y_lo, y_hi))
            walking = rng.random() < 0.75
            yaw = 0.0 if rng.random() < 0.5 else math.pi
            speed = rng.uniform(0.9, 1.6) if walking else 0.0
            if not walking:
                yaw = rng.uniform(-math.pi, math.pi)
            scene.persons.append(
                self._person(x, sign * y_walk, curb_h, yaw + rng.normal(0, 0.05), speed)
            )
            if rng.random() < 0.3:  # a companion
                scene.persons.append(
                    self._person(
                        x + rng.uniform(-0.4, 0.4),
                        sign * (y_walk - 0.6 if y_walk - 0.6 > y_lo else y_walk + 0.6),
                        curb_h,
                        yaw,
                        speed,
                    )
                )

    # moving traffic -----------------------------------------------------------------------------

    def _traffic(self) -> None:
        rng, scene = self.rng, self.scene
        road = scene.road
        lane_w = road.lane_width
        ego_v = self.ego_speed
        horizon = 1.8  # seconds of snippet around T_REF to stay collision free
        district = self.district
        # Trucks and buses are rare classes: only some scenes have them at all.
        truck_p = (0.2 if district == 'industrial' else 0.1) * (rng.random() < 0.3)
        bus_p = (0.15 if district == 'city' else 0.08) * (rng.random() < 0.5)

        def kind_draw() -> str:
            r = rng.random()
            if r < bus_p:
                return 'bus'
            if r < bus_p + truck_p:
                return 'truck'
            return 'van' if r < bus_p + truck_p + 0.1 else 'car'

        # Same direction: a queue in each lane, moving at the lane's speed.
        for lane in range(road.lanes_right):
            y = -(lane + 0.5) * lane_w
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
            if lane != self.ego_lane and abs(x) < 7 and abs(y - scene.ego.y0) < 2.5:
                x = 9.0
            while x < 160:
                kind = kind_draw()
                length, width, height = self._car_dims(kind)
                scene.vehicles.append(
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
                        else jitter(
                            rng,
                            pick(rng, ((0.85, 0.85, 0.8), (0.8, 0.75, 0.2), (0.2, 0.35, 0.6))),
                            0.05,
                        ),
                    )
                )
                x += length + rng.uniform(8, 25) + speed * rng.uniform(0.8, 2.0)
                if rng.random() < 0.4:
                    x += rng.uniform(15, 50)
        # Oncoming lanes.
        for lane in range(road.lanes_left):
            y = (lane + 0.5) * lane_w
            if road.tram_y is not None and abs(y - road.tram_y) < 0.5 and rng.random() < 0.4:
                continue  # keep the tram lane clear
            speed = float(rng.uniform(4, 14)) if rng.random() > 0.1 else 0.0
            x = rng.uniform(8, 45)
            while x < 180:
                kind = kind_draw()
                length, width, height = self._car_dims(kind)
                scene.vehicles.append(
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
                        else jitter(rng, (0.85, 0.85, 0.8), 0.05),
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
            scene.vehicles = [
                vehicle for vehicle in scene.vehicles if vehicle.parked or abs(vehicle.y - y) > 1.5
            ]
            scene.vehicles.append(
                Vehicle(
                    'tram',
                    x,
                    y,
                    math.pi if towards else 0.0,
                    speed,
                    length,
                    width,
                    height,
                    jitter(
                        rng,
                        pick(
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
                    (road.edge_left - (2.4 if scene.road.lanes_left else 0) - 0.8)
                    if towards
                    else (road.edge_right + 0.8 + self._parking_width(-1))
                )
            else:
                speed = float(rng.uniform(5, 13))
                edge = (
                    (lane_w * 0.5 + 0.7) if towards else -(road.lanes_right - 0.5) * lane_w - 0.9
                )
            if road.tram_y is not None and abs(edge - road.tram_y) < 2.0:
                continue  # the tram's lane stays clear
            rel = max(0.0, ego_v - speed) * horizon * 1.6
            x = rng.uniform(8 + rel, 50 + rel)
            yaw = math.pi if towards else 0.0
            scene.vehicles = [
                vehicle
                for vehicle in scene.vehicles
                if vehicle.parked
                or not (
                    abs(vehicle.y - edge) < 1.8 and abs(vehicle.x - x) < vehicle.length / 2 + 4
                )
            ]
            rider = self._person(0, 0, 0, yaw, 0.0)
            rider.label = RIDER
            scene.two_wheelers.append(
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
            scene.vehicles = [
                vehicle
                for vehicle in scene.vehicles
                if not (abs(vehicle.y - y) < 2 and abs(vehicle.x - x) < 4)
            ]
            scene.two_wheelers.append(
                TwoWheeler(
                    'motorcycle', x, y, 0.0, rng.normal(0, 0.3), 0.0, self._vehicle_color(), None
                )
            )

    def _parking_width(self, sign: int) -> float:
        road = self.scene.road
        lanes = road.lanes_right if sign < 0 else road.lanes_left
        return abs(road.edge_right if sign < 0 else road.edge_left) - lanes * road.lane_width

    def _intersection(self, sides: list[Side]) -> None:
        rng, scene = self.rng, self.scene
        road = scene.road
        curb_h = road.curb_height
        if road.crossing is None:
            return
        c0, c1 = road.crossing
        state = int(rng.integers(4))
        red = state in (0, 3)  # red for the main road: cross traffic and zebra may move
        if red:
            # Main-road traffic must not be in the junction or on the zebra during the snippet.
            lo = (self.zebra if self.zebra is not None else c0) - 3.0
            t0, t1 = 0.0, (NUM_FRAMES - 1) / FPS

            def clear(road_user: Vehicle | TwoWheeler) -> bool:
                if getattr(road_user, 'parked', False) or abs(math.sin(road_user.yaw)) > 0.5:
                    return True
                half = getattr(road_user, 'length', 2.0) / 2
                xa, xb = road_user.pose(t0)[0], road_user.pose(t1)[0]
                return max(xa, xb) + half < lo or min(xa, xb) - half > c1 + 1.0

            scene.vehicles = [vehicle for vehicle in scene.vehicles if clear(vehicle)]
            scene.two_wheelers = [tw for tw in scene.two_wheelers if tw.speed == 0 or clear(tw)]
        # Traffic lights at the near corners (facing the ego car) and the far ones.
        for side in sides:
            sign = side.sign
            y = sign * (side.curb + 0.5)
            arm = 0.0
            if sign < 0 and rng.random() < 0.5:
                arm = min(side.curb - 1.0, rng.uniform(3.0, 6.5))
            scene.traffic_lights.append(
                TrafficLight(
                    c0 - 1.0,
                    y,
                    curb_h,
                    2.4 if not arm else 5.4,
                    math.pi,
                    state,
                    rng.uniform(1.8, 2.4),
                    arm_length=arm,
                )
            )
            if rng.random() < 0.7:
                scene.traffic_lights.append(
                    TrafficLight(c1 + 1.0, y, curb_h, 3.2, math.pi, state, rng.uniform(2.2, 2.6))
                )
            # Pedestrian lights facing across the street, cross traffic lights facing sideways.
            if rng.random() < 0.6:
                scene.traffic_lights.append(
                    TrafficLight(
                        c0 - 3.5, y, curb_h, 2.6, -sign * math.pi / 2, 0, 2.0, pedestrian=True
                    )
                )
            if rng.random() < 0.6:
                scene.traffic_lights.append(
                    TrafficLight(
                        c1 + 1.2,
                        sign * (side.curb + 1.0),
                        curb_h,
                        3.0,
                        -sign * math.pi / 2 + math.pi,
                        2,
                        2.2,
                    )
                )
            # Street-name / direction signs at the corner.
            if rng.random() < 0.7:
                plate = Plate(2.6, 'rect', 0.7, (0.92, 0.92, 0.9), (0.1, 0.1, 0.1))
                scene.signs.append(
                    Sign(c0 - 0.5, sign * (side.curb + 1.5), curb_h, 3.0, math.pi, (plate,))
                )
        # Cross traffic, stopped or moving, and pedestrians on the zebra.
        # One speed per direction and a minimum spacing, so cross traffic never overlaps.
        speeds = {k: float(rng.uniform(0, 10)) if red else 0.0 for k in (-1, 1)}
        taken: list[tuple[int, float, float]] = []
        for _ in range(int(rng.integers(0, 4))):
            sign = 1 if rng.random() < 0.5 else -1
            kind = 'car' if rng.random() < 0.85 else 'truck'
            length, width, height = self._car_dims(kind)
            x = c0 + (c1 - c0) * (0.3 if sign > 0 else 0.7)
            edge = road.edge_left if sign < 0 else -road.edge_right
            y = -sign * rng.uniform(edge + 4 + length / 2, 60)
            if any(
                k == sign and abs(y - other_y) < (length + other_length) / 2 + 2
                for k, other_y, other_length in taken
            ):
                continue
            taken.append((sign, y, length))
            speed = speeds[sign]
            scene.vehicles.append(
                Vehicle(
                    kind,
                    x,
                    y,
                    sign * math.pi / 2,
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
                sign = 1 if rng.random() < 0.5 else -1
                y = rng.uniform(road.edge_right, road.edge_left)
                scene.persons.append(
                    self._person(
                        self.zebra + rng.uniform(-1.2, 1.2),
                        y,
                        0.0,
                        sign * math.pi / 2,
                        rng.uniform(0.9, 1.6),
                    )
                )

    def _far_row(self) -> None:
        """A closing row of buildings beyond the T-junction at the end of the street."""
        rng, scene = self.rng, self.scene
        x = scene.road.x_end + 18
        lo, hi = self._heights()
        y = -Y_FAR
        while y < Y_FAR:
            width = rng.uniform(10, 25)
            corners = rect(x, x + 15, y, y + width, 0.0)[:, :2]
            scene.buildings.append(
                Building(corners, rng.uniform(lo, hi * 1.2), self._facade(self.district))
            )
            y += width
        for _ in range(int(rng.integers(0, 6))):
            self._tree(x - 2, rng.uniform(-30, 30), scene.road.curb_height, big=True)
