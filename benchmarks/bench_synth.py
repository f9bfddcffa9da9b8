"""Throughput of the synthetic world: images per second per core (render, and render + write).

    .venv/bin/python benchmarks/bench_synth.py --size 1024 512 --frames 20

Runs in one process (= one core), so the figure is per core; `tsa data synth` scales it with
--workers.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from tsa_ros.data.camera import CameraModel
from tsa_ros.data.cityscapes import CityscapesLayout, FrameId, write_png
from tsa_ros.data.labels import ids_to_train_ids
from tsa_ros.data.synth import render_frame, sample_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, nargs=2, default=[1024, 512], metavar=('W', 'H'))
    parser.add_argument('--frames', type=int, default=20)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    width, height = args.size
    camera = CameraModel.cityscapes_default(width, height)
    scenes = [
        sample_scene(np.random.default_rng(args.seed + i), camera) for i in range(args.frames)
    ]
    render_frame(scenes[0], 19, camera)  # warm-up (noise tiles, caches)

    start = time.perf_counter()
    rendered = [render_frame(scene, 19, camera) for scene in scenes]
    render_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        layout = CityscapesLayout(Path(tmp))
        start = time.perf_counter()
        for i, (rgb, ids) in enumerate(rendered):
            fid = FrameId('bench', i, 19)
            write_png(layout.image('train', fid), rgb)
            write_png(layout.label('train', fid, 'labelIds'), ids)
            write_png(layout.label('train', fid, 'labelTrainIds'), ids_to_train_ids(ids))
        write_s = time.perf_counter() - start

    n = args.frames
    print(f'{width}x{height}, {n} scenes, 1 core:')
    print(f'  render           {n / render_s:6.2f} images/s  ({1000 * render_s / n:.0f} ms each)')
    print(f'  render + 3 PNGs  {n / (render_s + write_s):6.2f} images/s')


if __name__ == '__main__':
    main()
