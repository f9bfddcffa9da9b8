"""Pinhole camera of a forward-looking car camera, in Cityscapes' camera-json convention.

Cityscapes ships one ``camera/<split>/<city>/<city>_<seq>_<frame>_camera.json`` per image::

    {"extrinsic": {"baseline": 0.21, "pitch": 0.038, "roll": 0.0, "yaw": -0.0195,
                   "x": 1.7, "y": 0.1, "z": 1.22},
     "intrinsic": {"fx": 2262.52, "fy": 2265.30, "u0": 1096.98, "v0": 513.137}}

with intrinsics in pixels of the full 2048x1024 image, angles in radians and the camera
position in metres in the vehicle frame (x forward, y left, z up; ``z`` is the mounting
height). The synthetic world renders with the same model and writes the same files, so the
data loaders and the rosbag writer treat real and synthetic data alike.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

#: Cityscapes' native image size (W, H) and a typical calibration of its cameras.
CITYSCAPES_SIZE = (2048, 1024)


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics for an image of ``width`` x ``height`` plus the mounting pose."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    mount_height: float = 1.22  # metres above the road
    pitch: float = 0.038  # radians, positive looks down
    roll: float = 0.0
    yaw: float = 0.0
    baseline: float = 0.209313  # stereo baseline in metres (CameraInfo's right projection)

    @classmethod
    def cityscapes_default(cls, width: int = 2048, height: int = 1024) -> CameraModel:
        """A typical Cityscapes calibration, scaled to ``width`` x ``height``."""
        full = cls(2048, 1024, fx=2262.52, fy=2265.30, cx=1096.98, cy=513.137)
        return full.scaled(width, height)

    def scaled(self, width: int, height: int) -> CameraModel:
        """The same camera for an image resized to ``width`` x ``height``."""
        sx, sy = width / self.width, height / self.height
        # Pixel centres: a resize maps u -> (u + 0.5) * s - 0.5.
        return replace(
            self,
            width=int(width),
            height=int(height),
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
        )

    @property
    def K(self) -> np.ndarray:
        """3x3 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def to_cityscapes_json(self) -> dict:
        """The camera as a Cityscapes camera-json dict (intrinsics at this image size)."""
        return {
            'extrinsic': {
                'baseline': self.baseline,
                'pitch': self.pitch,
                'roll': self.roll,
                'yaw': self.yaw,
                'x': 1.7,
                'y': 0.1,
                'z': self.mount_height,
            },
            'intrinsic': {'fx': self.fx, 'fy': self.fy, 'u0': self.cx, 'v0': self.cy},
        }

    @classmethod
    def from_cityscapes_json(
        cls, data: dict | str | Path, width: int = 2048, height: int = 1024
    ) -> CameraModel:
        """Read a Cityscapes camera json (a dict or a file) whose intrinsics are for
        ``width`` x ``height`` pixels (2048x1024 for real Cityscapes)."""
        if not isinstance(data, dict):
            path = Path(data)
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f'cannot read camera json {path}: {exc}') from exc
        try:
            intr, extr = data['intrinsic'], data.get('extrinsic', {})
            return cls(
                int(width),
                int(height),
                fx=float(intr['fx']),
                fy=float(intr['fy']),
                cx=float(intr['u0']),
                cy=float(intr['v0']),
                mount_height=float(extr.get('z', 1.22)),
                pitch=float(extr.get('pitch', 0.0)),
                roll=float(extr.get('roll', 0.0)),
                yaw=float(extr.get('yaw', 0.0)),
                baseline=float(extr.get('baseline', 0.209313)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f'malformed Cityscapes camera json: missing or bad {exc}') from exc

    def to_dict(self) -> dict:
        return asdict(self)
