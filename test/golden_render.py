"""Render the golden frames and print one sha256 per frame (run by test_synth_render.py).

SIMD code paths of numpy and OpenCV round differently on different CPUs, so the frames are
rendered with numpy's dispatch limited to the x86-64-v2 baseline (the caller sets
NPY_DISABLE_CPU_FEATURES) and OpenCV's optimised paths off: the hashes then depend on the
code and the pinned library versions only.
"""

import hashlib
import sys

import cv2
import numpy as np

from tsa_ros.data.camera import CameraModel
from tsa_ros.data.generate import PRESETS, sample_seed
from tsa_ros.data.synth import ANNOTATED_FRAME, render_frame, sample_scene

#: (preset, sample index, frame): the annotated frame, and a later one of a sequence.
FRAMES = (
    ('tiny', 0, ANNOTATED_FRAME),
    ('tiny', 1, 29),
    ('default', 0, ANNOTATED_FRAME),
    ('default', 1, 3),
    ('paper', 0, ANNOTATED_FRAME),
)


def main() -> None:
    cv2.setUseOptimized(False)
    for preset, index, frame in FRAMES:
        width, height = PRESETS[preset].size
        camera = CameraModel.cityscapes_default(width, height)
        seed = sample_seed(0, 'train', 'golden', index)
        scene = sample_scene(np.random.default_rng(seed), camera)
        rgb, labels = render_frame(scene, frame, scene.camera)
        digest = hashlib.sha256(rgb.tobytes() + labels.tobytes()).hexdigest()
        print(f'{preset} {index} {frame} {digest}')
    sys.stdout.flush()


if __name__ == '__main__':
    main()
