"""Procedural Cityscapes-like street scenes: the project's embedded default data set.

:func:`sample_scene` draws a street (layout, buildings, vegetation, street furniture, road
users and their motion, lighting) and :func:`render_frame` renders any of its 30 frames
(17 Hz; frame 19 is the annotated one) as an RGB image plus a Cityscapes label-id map.

World side: ``scene`` (the dataclasses both sides share), ``world`` (sampling), ``layout``
and ``population``. Renderer side: ``render`` (the pipeline), ``mesh``, ``raster``,
``shading`` and ``effects``, one module per stage.
"""

from tsa_ros.data.synth.render import label_histogram, render_frame
from tsa_ros.data.synth.scene import (
    ANNOTATED_FRAME,
    FPS,
    LABEL_IDS,
    NUM_FRAMES,
    Scene,
    SceneStyle,
)
from tsa_ros.data.synth.world import sample_scene, sample_style

__all__ = [
    'ANNOTATED_FRAME',
    'FPS',
    'LABEL_IDS',
    'NUM_FRAMES',
    'Scene',
    'SceneStyle',
    'label_histogram',
    'render_frame',
    'sample_scene',
    'sample_style',
]
