"""``tsa data synth``: write the synthetic driving world as a Cityscapes data set.

The splits mirror the paper (Bär et al. 2019, sec. 4.1): a labeled ``train`` set, a disjoint
unlabeled ``train_extra`` set (other cities, other seeds; its coarse labels exist as in
Cityscapes but are never used), a mini validation set (``val``) and a mini test set (``test``),
plus 30-frame ``leftImg8bit_sequence`` snippets whose 20th frame is the annotated one.

Every sample is rendered from its own seed, derived from (data set seed, split, city, index),
so a data set is deterministic per seed and any sample can be regenerated on its own.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tsa_ros.data.camera import CameraModel
from tsa_ros.data.cityscapes import MANIFEST, CityscapesLayout, DataError, FrameId, write_png
from tsa_ros.data.labels import CLASS_NAMES, class_histogram, ids_to_train_ids

SNIPPET_LENGTH = 30
ANNOTATED_INDEX = 19  # Cityscapes: the 20th frame of a snippet is annotated
GENERATOR_VERSION = 1

# Made-up city names; no split shares a city with another (eq. 2 of the paper for train and
# train_extra, and clean evaluation sets).
CITIES = {
    'train': ('aldermoor', 'brackwater', 'corvenna', 'dunmere', 'elsfield', 'farrowby'),
    'train_extra': ('galloway', 'hollins', 'ivybridge', 'juniper', 'kestrel', 'larkhill'),
    'val': ('millbrook',),
    'test': ('northgate', 'oakhurst'),
}


@dataclass(frozen=True)
class SynthPreset:
    """Size of a generated data set. ``size`` is the native (W, H) of the written images."""

    name: str
    size: tuple[int, int]
    counts: dict[str, int]
    sequences: dict[str, int] = field(default_factory=dict)  # split -> snippets with 30 frames
    model_input: tuple[int, int] = (0, 0)  # (H, W) the experiments feed the networks


PRESETS = {
    # Seconds: for tests.
    'tiny': SynthPreset(
        'tiny',
        (256, 128),
        {'train': 8, 'train_extra': 8, 'val': 4, 'test': 4},
        sequences={'val': 2},
        model_input=(64, 128),
    ),
    # `tsa demo`: small enough to generate in about a minute and to train T and S on a
    # 2-core CPU in minutes; networks see 192x96.
    'demo': SynthPreset(
        'demo',
        (384, 192),
        {'train': 300, 'train_extra': 100, 'val': 20, 'test': 40},
        model_input=(96, 192),
    ),
    # The experiments: networks see 256x128, like the paper's 2x
    # downscale of the native 512x256.
    'default': SynthPreset(
        'default',
        (512, 256),
        {'train': 1000, 'train_extra': 2000, 'val': 60, 'test': 200},
        sequences={'val': 20, 'test': 20},
        model_input=(128, 256),
    ),
    # Cityscapes' sizes: 2048x1024 images (networks see 1024x512), 2975 / 19998 / 59 / 441.
    'paper': SynthPreset(
        'paper',
        (2048, 1024),
        {'train': 2975, 'train_extra': 19998, 'val': 59, 'test': 441},
        sequences={'val': 59},
        model_input=(512, 1024),
    ),
}


def sample_seed(seed: int, split: str, city: str, index: int) -> int:
    """A 63-bit seed for one sample, independent across splits, cities and indices."""
    digest = hashlib.sha256(f'{seed}/{split}/{city}/{index}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


def coarse_from_fine(label_ids: np.ndarray, margin: int) -> np.ndarray:
    """A Cityscapes-like coarse annotation: fine labels with a void band along every border."""
    from scipy.ndimage import binary_dilation

    edge = np.zeros(label_ids.shape, bool)
    edge[:, 1:] |= label_ids[:, 1:] != label_ids[:, :-1]
    edge[1:, :] |= label_ids[1:, :] != label_ids[:-1, :]
    band = binary_dilation(edge, iterations=max(1, margin))
    coarse = label_ids.copy()
    coarse[band] = 0  # "unlabeled"
    return coarse


@dataclass(frozen=True)
class _Task:
    root: str
    split: str
    city: str
    seq: int
    seed: int
    size: tuple[int, int]
    sequence: bool


def _render_sample(task: _Task) -> np.ndarray:
    """Render and write one sample; returns its trainId histogram (labeled splits) or zeros."""
    from tsa_ros.data.synth import render_frame, sample_scene

    layout = CityscapesLayout(Path(task.root))
    width, height = task.size
    base_camera = CameraModel.cityscapes_default(width, height)
    scene = sample_scene(np.random.default_rng(task.seed), base_camera)
    camera = scene.camera  # the scene's jittered mounting at this image size
    fid = FrameId(task.city, task.seq, ANNOTATED_INDEX)
    histogram = np.zeros(len(CLASS_NAMES), np.int64)

    if task.sequence:
        for frame in range(SNIPPET_LENGTH):
            rgb, _ = render_frame(scene, frame, camera)
            write_png(
                layout.image(task.split, FrameId(task.city, task.seq, frame), sequence=True), rgb
            )
        return histogram

    rgb, label_ids = render_frame(scene, ANNOTATED_INDEX, camera)
    write_png(layout.image(task.split, fid), rgb)
    if task.split == 'train_extra':
        coarse = coarse_from_fine(label_ids, margin=max(2, width // 128))
        write_png(layout.label(task.split, fid, 'labelIds', coarse=True), coarse)
        write_png(
            layout.label(task.split, fid, 'labelTrainIds', coarse=True), ids_to_train_ids(coarse)
        )
    else:
        train_ids = ids_to_train_ids(label_ids)
        write_png(layout.label(task.split, fid, 'labelIds'), label_ids)
        write_png(layout.label(task.split, fid, 'labelTrainIds'), train_ids)
        histogram = class_histogram(train_ids)
    camera_json = camera.to_cityscapes_json() | {'tsa_image_size': [width, height]}
    path = layout.camera(task.split, fid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(camera_json, indent=2))
    return histogram


def _split_tasks(
    root: Path, preset: SynthPreset, seed: int, split: str, count: int, sequence: bool
) -> list[_Task]:
    """``count`` samples of a split, spread round-robin over its cities."""
    cities = CITIES[split]
    tasks = []
    for index in range(count):
        city, seq = cities[index % len(cities)], index // len(cities)
        seed_ = sample_seed(seed, split, city, seq)
        tasks.append(_Task(str(root), split, city, seq, seed_, preset.size, sequence))
    return tasks


def plan(root: Path, preset: SynthPreset, seed: int) -> list[_Task]:
    """Every sample of a data set: the annotated frames, then the sequence snippets."""
    tasks = []
    for split, count in preset.counts.items():
        tasks += _split_tasks(root, preset, seed, split, count, sequence=False)
    for split, count in preset.sequences.items():
        # Snippets belong to annotated frames: the same seeds, so frame 19 is the labeled image.
        count = min(count, preset.counts[split])
        tasks += _split_tasks(root, preset, seed, split, count, sequence=True)
    return tasks


def generate(
    out: str | Path,
    preset: str | SynthPreset = 'tiny',
    *,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Generate a synthetic Cityscapes-layout data set; returns the manifest it writes."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f'unknown preset {preset!r}; choose from {sorted(PRESETS)}')
        preset = PRESETS[preset]
    root = Path(out)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise DataError(f'{root} exists and is not empty; pass overwrite=True (--overwrite)')
    root.mkdir(parents=True, exist_ok=True)
    tasks = plan(root, preset, seed)
    workers = workers or os.cpu_count() or 1
    start = time.perf_counter()
    histogram = np.zeros(len(CLASS_NAMES), np.int64)
    bar = tqdm(total=len(tasks), desc=f'synth {preset.name}', unit='sample', disable=not progress)
    if workers == 1:
        results = map(_render_sample, tasks)
    else:
        # spawn, not fork: a caller that has started threads (rclpy, DDS, torch) must not be
        # forked (a forked child segfaulted in the test suite after the ROS tests).
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn'))
        results = pool.map(_render_sample, tasks, chunksize=4)
    try:
        for result in results:
            histogram += result
            bar.update()
    finally:
        bar.close()
        if workers != 1:
            pool.shutdown()
    seconds = time.perf_counter() - start
    total = max(1, int(histogram.sum()))
    manifest = {
        'generator': 'tsa_ros synthetic driving world',
        'generator_version': GENERATOR_VERSION,
        'preset': asdict(preset),
        'seed': seed,
        'splits': {'minival': ['val', None], 'minitest': ['test', None]},
        'cities': {k: list(v) for k, v in CITIES.items()},
        'class_histogram': {
            name: round(int(n) / total, 6) for name, n in zip(CLASS_NAMES, histogram, strict=True)
        },
        'labeled_pixels': int(histogram.sum()),
        'seconds': round(seconds, 1),
        'workers': workers,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
