"""The street layout: cross section, lanes, markings and ground polygons of one street.

:func:`sample_street` draws the road (lanes, parking strips, curbs, an optional cross street
and tram track), the two :class:`Side` s of the street (grass strip, sidewalk, front zone,
building line) and paints the markings and ground polygons onto the :class:`RoadLayout`.
:mod:`~tsa_ros.data.synth.population` then fills the sides with buildings, furniture,
vegetation and road users. Sampling helpers shared by both live here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from tsa_ros.data.synth.scene import (
    GROUND,
    PARKING,
    ROAD,
    SIDEWALK,
    TERRAIN,
    Color,
    GroundPoly,
    Marking,
    RoadLayout,
    SceneStyle,
)

Y_FAR = 110.0  # lateral extent of the modelled world
X_START = -70.0  # the ego car starts at most ~16 m behind x = 0

T = TypeVar('T')


def jitter(rng: np.random.Generator, color: Color, amount: float) -> Color:
    """``color`` with each channel scaled by ``1 + amount * N(0, 1)``, clipped to [0, 1]."""
    return tuple(
        min(1.0, max(0.0, channel * (1.0 + amount * float(z))))
        for channel, z in zip(color, rng.standard_normal(len(color)), strict=True)
    )


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    """One of ``options``, uniformly."""
    return options[int(rng.integers(len(options)))]


def rect(x0: float, x1: float, y0: float, y1: float, z: float) -> np.ndarray:
    """Axis-aligned rectangle at height z, counter-clockwise seen from above."""
    xa, xb = min(x0, x1), max(x0, x1)
    ya, yb = min(y0, y1), max(y0, y1)
    return np.array([[xa, ya, z], [xb, ya, z], [xb, yb, z], [xa, yb, z]], dtype=np.float64)


class Occupancy:
    """1-D intervals along x already taken on one lateral line, to keep things apart."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []

    def free(self, x0: float, x1: float) -> bool:
        return all(x1 <= a or x0 >= b for a, b in self.spans)

    def take(self, x0: float, x1: float) -> None:
        self.spans.append((x0, x1))


@dataclass
class Side:
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
    furniture: Occupancy = field(default_factory=Occupancy)

    @property
    def walk0(self) -> float:  # |y| where the sidewalk starts
        return self.curb + self.grass

    @property
    def building_line(self) -> float:
        return self.curb + self.grass + self.sidewalk + self.front

    def y(self, d: float) -> float:
        """Signed y of a point ``d`` metres outwards from the road centre line."""
        return self.sign * d


@dataclass
class Street:
    """What the layout hands to the population: the road, its two sides and the zebra."""

    road: RoadLayout
    sides: list[Side]  # right (ego) side first
    zebra: float | None  # x where pedestrians cross the main road (None: no cross street)


def sample_street(rng: np.random.Generator, district: str, style: SceneStyle) -> Street:
    """Draw the street's layout (rng draws in the order the scene's seed pins)."""
    builder = _LayoutBuilder(rng, district, style)
    road, sides = builder.layout()
    return Street(road, sides, builder.zebra)


class _LayoutBuilder:
    """Samples the road and its sides piece by piece from one generator."""

    def __init__(self, rng: np.random.Generator, district: str, style: SceneStyle) -> None:
        self.rng = rng
        self.district = district
        self.style = style
        self.zebra: float | None = None

    def layout(self) -> tuple[RoadLayout, list[Side]]:
        """Lanes, sides and the cross street, then the markings and ground polygons on them."""
        rng, district = self.rng, self.district
        uniform = rng.uniform
        lane_w = uniform(2.9, 3.5)
        if district == 'industrial':
            lanes_r, lanes_l = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        elif district == 'city':
            lanes_r = int(rng.choice([1, 2], p=[0.55, 0.45]))
            lanes_l = int(rng.choice([0, 1, 2], p=[0.12, 0.5, 0.38]))
        else:
            lanes_r, lanes_l = 1, int(rng.choice([0, 1], p=[0.15, 0.85]))
        tram = lanes_l >= 1 and rng.random() < {'city': 0.7, 'residential': 0.25}.get(
            district, 0.0
        )
        curb_h = uniform(0.1, 0.16)
        x_end = float(uniform(110, 260))
        crossing = None
        if rng.random() < 0.6:
            x0 = float(uniform(14, 70))
            crossing = (x0, x0 + float(uniform(9, 16)))

        sides = []
        for sign, lanes in ((-1, lanes_r), (1, lanes_l)):
            park_p = {'city': 0.5, 'residential': 0.55, 'green': 0.3, 'industrial': 0.3}[district]
            parking = uniform(2.0, 2.4) if rng.random() < park_p else 0.0
            if sign == 1 and tram and lanes_l == 1:
                parking = 0.0 if rng.random() < 0.6 else parking
            curb = lanes * lane_w + parking + (0.0 if lanes else uniform(0.5, 1.5))
            green = {'city': 0.3, 'residential': 0.45, 'green': 0.85, 'industrial': 0.4}[district]
            grass = uniform(1.2, 3.5) if rng.random() < green else 0.0
            sidewalk = {
                'city': uniform(2.5, 5.5),
                'residential': uniform(1.8, 3.2),
                'green': uniform(1.8, 3.0),
                'industrial': uniform(1.8, 3.0),
            }[district]
            if district == 'city':
                front = 0.0 if rng.random() < 0.7 else uniform(1.0, 3.0)
                kinds = ('paving', 'grass', 'gravel')
            else:
                front = uniform(2.0, 8.0)
                kinds = ('grass', 'grass', 'paving', 'gravel')
            edge = (
                pick(rng, ('none', 'hedge', 'hedge', 'fence', 'wall')) if front > 1.5 else ('none')
            )
            sides.append(
                Side(
                    sign=sign,
                    curb=curb,
                    parking=parking,
                    parking_label=parking > 0 and rng.random() < 0.4,
                    grass=grass,
                    sidewalk=sidewalk,
                    front=front,
                    front_kind=pick(rng, kinds),
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

    def _markings(self, road: RoadLayout, sides: list[Side]) -> None:
        rng = self.rng
        lane_w = road.lane_width
        markings = road.markings
        x0, x1 = road.x_start, road.x_end
        spans = (
            [(x0, x1)]
            if road.crossing is None
            else [(x0, road.crossing[0]), (road.crossing[1], x1)]
        )
        worn = rng.uniform(0.6, 0.9)
        line = rng.uniform(0.1, 0.15)
        for start, end in spans:
            # Centre line between the directions.
            if road.lanes_left and road.lanes_right:
                style = pick(rng, ('dashed', 'solid', 'double'))
                if style == 'double':
                    for off in (-0.12, 0.12):
                        markings.append(
                            Marking(start, end, off - line / 2, off + line / 2, brightness=worn)
                        )
                else:
                    dash = 3.0 if style == 'dashed' else 0.0
                    markings.append(
                        Marking(
                            start,
                            end,
                            -line / 2,
                            line / 2,
                            dash=dash,
                            gap=6.0 * (dash > 0),
                            brightness=worn,
                        )
                    )
            # Lane lines within one direction.
            for k in range(1, road.lanes_right):
                markings.append(
                    Marking(
                        start,
                        end,
                        -k * lane_w - line / 2,
                        -k * lane_w + line / 2,
                        dash=3.0,
                        gap=6.0,
                        brightness=worn,
                    )
                )
            for k in range(1, road.lanes_left):
                markings.append(
                    Marking(
                        start,
                        end,
                        k * lane_w - line / 2,
                        k * lane_w + line / 2,
                        dash=3.0,
                        gap=6.0,
                        brightness=worn,
                    )
                )
            # Parking strip edges.
            for side in sides:
                if side.parking > 0 and not side.parking_label and rng.random() < 0.5:
                    yy = side.curb - side.parking
                    markings.append(
                        Marking(
                            start, end, side.y(yy) - 0.06, side.y(yy) + 0.06, brightness=worn * 0.9
                        )
                    )
        if road.crossing is not None:
            c0, c1 = road.crossing
            # Zebra crossings in front of and behind the cross street, stop line before.
            width = rng.uniform(3.0, 4.5)
            zebra_x = c0 - 1.0 - width
            if rng.random() < 0.75:
                markings.append(
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
                markings.append(
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
                markings.append(
                    Marking(stop - 0.4, stop, -road.lanes_right * lane_w, 0.0, brightness=worn)
                )
        self.zebra = road.crossing[0] - 1.0 - 2.0 if road.crossing else None

    def _ground(self, road: RoadLayout, sides: list[Side]) -> None:
        """Ground polygons, back to front: road at z=0, then raised sidewalk-level areas."""
        style, rng = self.style, self.rng
        ground = road.ground
        curb_h = road.curb_height
        asphalt, paving = style.asphalt, style.paving
        curb_col = jitter(rng, (0.62, 0.62, 0.6), 0.05)
        x0, x1 = road.x_start, road.x_end
        # Main road, cross street and the T-junction at the far end.
        ground.append(
            GroundPoly(
                rect(x0, x1 + 14, road.edge_right, road.edge_left, 0.0), ROAD, 'road', asphalt
            )
        )
        ground.append(GroundPoly(rect(x1, x1 + 14, -Y_FAR, Y_FAR, 0.0), ROAD, 'road', asphalt))
        if road.crossing:
            c0, c1 = road.crossing
            ground.append(GroundPoly(rect(c0, c1, -Y_FAR, Y_FAR, 0.0), ROAD, 'road', asphalt))
        for side in sides:
            sign = side.sign
            for start, end in side.blocks:
                if side.parking > 0 and side.parking_label:
                    ground.append(
                        GroundPoly(
                            rect(
                                start,
                                end,
                                sign * (side.curb - side.parking),
                                sign * side.curb,
                                0.0,
                            ),
                            PARKING,
                            'parking',
                            jitter(rng, asphalt, 0.08),
                        )
                    )
                # Block base at sidewalk level out to the world's lateral end.
                base_kind = 'grass' if self.district in ('green', 'residential') else 'ground'
                base_label = TERRAIN if base_kind == 'grass' else GROUND
                base_col = (
                    style.grass if base_kind == 'grass' else jitter(rng, (0.45, 0.43, 0.4), 0.05)
                )
                ground.append(
                    GroundPoly(
                        rect(start, end, sign * side.curb, sign * Y_FAR, curb_h),
                        base_label,
                        base_kind,
                        base_col,
                    )
                )
                # Front zone, sidewalk and grass strip.
                if side.front > 0:
                    kind = side.front_kind
                    lab = {'paving': SIDEWALK, 'grass': TERRAIN, 'gravel': GROUND}[kind]
                    col = {
                        'paving': paving,
                        'grass': style.grass,
                        'gravel': jitter(rng, (0.5, 0.47, 0.42), 0.05),
                    }[kind]
                    ground.append(
                        GroundPoly(
                            rect(
                                start,
                                end,
                                sign * (side.building_line - side.front),
                                sign * side.building_line,
                                curb_h,
                            ),
                            lab,
                            'sidewalk' if kind == 'paving' else kind,
                            col,
                        )
                    )
                ground.append(
                    GroundPoly(
                        rect(
                            start,
                            end,
                            sign * side.walk0,
                            sign * (side.walk0 + side.sidewalk),
                            curb_h,
                        ),
                        SIDEWALK,
                        'sidewalk',
                        paving,
                    )
                )
                if side.grass > 0:
                    ground.append(
                        GroundPoly(
                            rect(start, end, sign * side.curb, sign * side.walk0, curb_h),
                            TERRAIN,
                            'grass',
                            style.grass,
                        )
                    )
                # Sidewalks along the cross street at block ends next to a crossing.
                cross_w = side.sidewalk
                if road.crossing and end == road.crossing[0]:
                    ground.append(
                        GroundPoly(
                            rect(end - cross_w, end, sign * side.curb, sign * Y_FAR, curb_h),
                            SIDEWALK,
                            'sidewalk',
                            paving,
                        )
                    )
                if road.crossing and start == road.crossing[1]:
                    ground.append(
                        GroundPoly(
                            rect(start, start + cross_w, sign * side.curb, sign * Y_FAR, curb_h),
                            SIDEWALK,
                            'sidewalk',
                            paving,
                        )
                    )
                # Curb faces (vertical, labelled sidewalk as in Cityscapes).
                curb_y = sign * side.curb
                face = np.array(
                    [
                        [start, curb_y, 0],
                        [end, curb_y, 0],
                        [end, curb_y, curb_h],
                        [start, curb_y, curb_h],
                    ],
                    float,
                )
                if sign < 0:
                    face = face[[1, 0, 3, 2]]  # keep the outward normal towards the road
                ground.append(GroundPoly(face, SIDEWALK, 'curb', curb_col))
                if road.crossing and start == road.crossing[1]:
                    ys = sorted((curb_y, sign * Y_FAR))
                    ground.append(
                        GroundPoly(
                            np.array(
                                [
                                    [start, ys[1], 0],
                                    [start, ys[0], 0],
                                    [start, ys[0], curb_h],
                                    [start, ys[1], curb_h],
                                ],
                                float,
                            ),
                            SIDEWALK,
                            'curb',
                            curb_col,
                        )
                    )
        # Beyond the T-junction: sidewalk and a base for the closing row of buildings.
        ground.append(
            GroundPoly(
                rect(x1 + 14, x1 + 90, -Y_FAR, Y_FAR, curb_h),
                GROUND,
                'ground',
                jitter(rng, (0.45, 0.43, 0.4), 0.05),
            )
        )
        ground.append(
            GroundPoly(rect(x1 + 14, x1 + 18, -Y_FAR, Y_FAR, curb_h), SIDEWALK, 'sidewalk', paving)
        )
        ground.append(
            GroundPoly(
                np.array(
                    [
                        [x1 + 14, Y_FAR, 0],
                        [x1 + 14, -Y_FAR, 0],
                        [x1 + 14, -Y_FAR, curb_h],
                        [x1 + 14, Y_FAR, curb_h],
                    ],
                    float,
                ),
                SIDEWALK,
                'curb',
                curb_col,
            )
        )
