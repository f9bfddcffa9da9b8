"""What the onnxruntime backend costs: export, session, weight swap, and forward vs torch.

    .venv/bin/python benchmarks/bench_onnx.py --sizes 128x256 256x512 --repeats 5

Per size, ERFNet (19 classes, random weights, seeded):

* export: torch.onnx.export into an empty cache (what the first start at a size pays);
* restart: a new OrtNetwork at a cached size up to its session (weights hash + session);
* session: the session alone (what a swap pays besides copying the network);
* swap: Predictor.with_weights(state_dict) up to the first labels (A's hot swap), and the
  same for the eager backend: the torch side (copy of the network, load_state_dict) that
  every backend pays;
* forward: Predictor.infer (labels; labels+posteriors) per backend, and the bare forward.

Every figure is the min (and median) of interleaved repetitions; the machine shares its cores
with other jobs, so the CPU model and load average are printed before and after.
"""

import argparse
import copy
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from tsa_ros import onnx_backend
from tsa_ros.bench.timing import interleave
from tsa_ros.inference import Predictor
from tsa_ros.models import ModelConfig, build_model


def _cpu() -> str:
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            return next(line.split(':', 1)[1].strip() for line in f if 'model name' in line)
    except (OSError, StopIteration):
        return platform.processor() or 'unknown CPU'


def _size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split('x'))
    return height, width


def _fmt(t) -> str:
    return f'{t.min * 1e3:9.1f} {t.median * 1e3:9.1f}'


def bench_size(arch: str, size: tuple[int, int], repeats: int) -> list[tuple[str, object]]:
    torch.manual_seed(0)
    config = ModelConfig(arch=arch, num_classes=19, input_size=size)
    model = build_model(config).eval()
    torch.manual_seed(1)
    weights = build_model(config).state_dict()  # A's next snapshot
    x = torch.from_numpy(
        np.random.default_rng(0).integers(0, 256, (1, 3, *size)).astype(np.float32)
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ[onnx_backend.CACHE_ENV] = tmp  # never the user's cache
        folder = onnx_backend.exported_graph(model, size)  # the cached graph
        predictor = Predictor(
            copy.deepcopy(model), device='cpu', input_size=size, backend='onnxruntime'
        )
        predictor.warmup(size)
        eager = Predictor(copy.deepcopy(model), device='cpu', input_size=size, backend='eager')
        fresh = iter(range(10**6))

        def export() -> None:
            onnx_backend.exported_graph(model, size, root / f'fresh{next(fresh)}')

        times = interleave(
            {
                'export (empty cache)': export,
                'restart (cache hit: hash + session)': lambda: onnx_backend.OrtNetwork(
                    model
                ).session(size),
                'session only': lambda: onnx_backend._Session(
                    folder, model, torch.get_num_threads()
                ),
                'swap: with_weights to first labels': lambda: predictor.with_weights(
                    weights
                ).infer(x),
                'swap, eager backend (the torch copy alone)': lambda: eager.with_weights(
                    weights
                ).infer(x),
            },
            repeats,
            warmup=0,
        )
        rows += list(times.items())

        cl = Predictor(
            copy.deepcopy(model), device='cpu', input_size=size, backend='channels_last'
        )
        onnx_backend.ALLOW_SPINNING = True  # the other setting, for comparison
        spinning = onnx_backend.OrtNetwork(copy.deepcopy(model))
        spinning.session(size)
        onnx_backend.ALLOW_SPINNING = False
        ort = onnx_backend.OrtNetwork(copy.deepcopy(model))
        ort.session(size)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            times = interleave(
                {
                    'eager: bare forward': lambda: eager.model(x),
                    'channels_last: bare forward': lambda: cl.model(x_cl),
                    'onnxruntime: logits only (graph incl. argmax)': lambda: ort.logits(x),
                    'eager: infer labels': lambda: eager.infer(x),
                    'channels_last: infer labels': lambda: cl.infer(x),
                    'onnxruntime: infer labels': lambda: predictor.infer(x),
                    'onnxruntime (spinning threads): infer labels': lambda: spinning.infer(x),
                    'eager: infer labels+posteriors': lambda: eager.infer(x, True),
                    'channels_last: infer labels+posteriors': lambda: cl.infer(x, True),
                    'onnxruntime: infer labels+posteriors': lambda: predictor.infer(x, True),
                },
                repeats,
            )
        rows += list(times.items())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=_size, nargs='+', default=[(128, 256), (256, 512)])
    parser.add_argument('--arch', default='erfnet', choices=('erfnet', 'deeplabv3plus'))
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=0, help='torch and ORT threads')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f'{_cpu()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, '
        f'torch {torch.__version__}, onnxruntime {onnx_backend._version("onnxruntime")}, '
        f'load average {[round(v, 2) for v in os.getloadavg()]} before'
    )
    for size in args.sizes:
        print(f'\n{args.arch} {size[0]}x{size[1]}: {"min ms":>9} {"median ms":>9}')
        for name, t in bench_size(args.arch, size, args.repeats):
            print(f'  {name:50s} {_fmt(t)}')
    print(f'\nload average {[round(v, 2) for v in os.getloadavg()]} after')


if __name__ == '__main__':
    main()
