"""Adversarial example sets on disk (paper sec. 3.5 and 4.3): ``tsa attack``.

The paper attacks a static network (the teacher T or the student S) with the iterative
least-likely class method at ``epsilon in {1, 10}`` and evaluates every network on the result.
:func:`make_ae_set` writes such a set as a self-contained Cityscapes-layout root::

    <out>/leftImg8bit/<folder>/<city>/<stem>_leftImg8bit.png       the AE (8-bit RGB)
    <out>/gtFine/<folder>/<city>/<stem>_gtFine_labelIds.png        labels, nearest-resized
    <out>/gtFine/<folder>/<city>/<stem>_gtFine_labelTrainIds.png
    <out>/tsa_synth.json                                           splits + provenance

Images are stored at the attacked network's input size, because the attack perturbs exactly
the pixels the network sees; a later resize would blur the perturbation. ``epsilon = 0``
writes the clean set the same way, so clean and adversarial sets go through identical I/O
(same resize, same 8-bit rounding) and the mIoU ratio compares like with like.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsa_ros.attacks import AttackConfig, least_likely_attack
from tsa_ros.data.cityscapes import (
    MANIFEST,
    CityscapesLayout,
    DataError,
    read_label,
    read_rgb,
    resize_pair,
    write_png,
)
from tsa_ros.data.labels import ids_to_train_ids, train_ids_to_ids
from tsa_ros.inference import frames_to_tensor, tensor_to_frames
from tsa_ros.models import SegmentationNet, load_checkpoint

__all__ = ['AE_MANIFEST_KEY', 'make_ae_set']

#: Key of the provenance record in the written manifest.
AE_MANIFEST_KEY = 'tsa_ae'
_OWN_PATHS = ('leftImg8bit', 'gtFine', MANIFEST)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f'{out} exists and is not a folder')
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f'{out} is not empty (pass --overwrite to replace the set)')
        # Remove only what a previous run wrote, so stale frames cannot mix into the new set.
        for name in _OWN_PATHS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _read_pair(
    layout: CityscapesLayout, folder: str, fid, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resized uint8 RGB and labelIds map (labelIds, so any Cityscapes id survives)."""
    image = read_rgb(layout.image(folder, fid))
    ids_path = layout.label(folder, fid, 'labelIds')
    if ids_path.is_file():
        ids = read_label(ids_path)
    else:
        train_path = layout.label(folder, fid, 'labelTrainIds')
        if not train_path.is_file():
            raise DataError(f'no fine label for {fid.stem}: {ids_path} is missing')
        ids = train_ids_to_ids(read_label(train_path))
    if ids.shape != image.shape[:2]:
        raise DataError(f'{fid.stem}: label {ids.shape} and image {image.shape[:2]} differ')
    image, ids = resize_pair(image, ids, size)
    return image, ids


def make_ae_set(
    root: str | Path,
    split: str,
    model: SegmentationNet | str | Path | None,
    epsilon: float,
    out: str | Path,
    size: tuple[int, int] | None = None,
    batch_size: int = 4,
    device: str | torch.device = 'cpu',
    progress: bool = True,
    *,
    overwrite: bool = False,
    checkpoint_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the least-likely AEs of ``split`` against ``model`` as a Cityscapes-layout root.

    Args:
        root: source data root (real Cityscapes or synthetic).
        split: split name (``minival``, ``minitest``, ``val`` ...), resolved by the source.
        model: attacked network, or a checkpoint path; may be None for ``epsilon == 0``
            (the clean set) when ``size`` is given.
        epsilon: L-inf bound in gray values; 0 writes the clean images unchanged.
        out: output root; must be empty or absent unless ``overwrite``.
        size: ``(H, W)`` of the written images; default the model's ``input_size``.
        batch_size: images attacked at once (the result does not depend on it).
        device: torch device of the attack.
        progress: print a progress line to stderr.
        overwrite: replace a previous set in ``out``.
        checkpoint_meta: provenance of ``model`` (``sha256``, ``path``) when it was loaded
            by the caller; filled automatically when ``model`` is a path.

    Returns:
        Summary: frames, epsilon, iterations, size, ``linf_max`` (max ``|adv - clean|``
        over all 8-bit images), ``linf_ok``, seconds and the written paths.
    """
    start = time.perf_counter()
    root, out = Path(root), Path(out)
    cfg = AttackConfig(epsilon=epsilon)  # paper defaults: step 1, int(min(eps+4, 1.25 eps))
    if batch_size < 1:
        raise ValueError(f'batch size must be >= 1, got {batch_size}')
    meta = dict(checkpoint_meta or {})
    if isinstance(model, (str, Path)):
        model, loaded = load_checkpoint(model, map_location=device)
        meta = {'path': loaded['path'], 'sha256': loaded['sha256']}
    if model is None and (epsilon > 0 or size is None):
        raise ValueError('a model is needed unless epsilon is 0 and a size is given')
    if model is not None:
        meta.setdefault('arch', model.config.arch)
        if model.config.arch == 'deeplabv3plus':
            meta.setdefault('backbone', model.config.backbone)
        meta.setdefault('input_size', list(model.config.input_size))
    size = tuple(int(s) for s in (size or model.config.input_size))
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f'size must be two positive ints (H, W), got {size}')

    layout = CityscapesLayout(root)
    folder, _ = layout.resolve_split(split)
    frames = layout.frames(split)  # clear DataError before anything is written
    _prepare_out(out, overwrite)
    target = CityscapesLayout(out)
    if model is not None:
        model = model.to(device).eval()

    linf_max = 0
    integer = True
    for first in range(0, len(frames), batch_size):
        chunk = frames[first : first + batch_size]
        pairs = [_read_pair(layout, folder, fid, size) for fid in chunk]
        clean = np.stack([image for image, _ in pairs])
        if epsilon > 0 and cfg.num_iterations > 0:
            adv = least_likely_attack(model, frames_to_tensor(clean, device), cfg)
            integer &= bool(torch.all(adv == adv.round()))
            adv = tensor_to_frames(adv)
        else:
            adv = clean
        linf_max = max(linf_max, int(np.abs(adv.astype(np.int16) - clean).max()))
        for fid, image, (_, ids) in zip(chunk, adv, pairs, strict=True):
            write_png(target.image(folder, fid), image)
            write_png(target.label(folder, fid, 'labelIds'), ids)
            write_png(target.label(folder, fid, 'labelTrainIds'), ids_to_train_ids(ids))
        if progress:
            done = first + len(chunk)
            print(f'\rtsa attack: {done}/{len(frames)} images', end='', file=sys.stderr)
    if progress:
        print(file=sys.stderr)

    seconds = time.perf_counter() - start
    provenance = {
        'source_root': str(root.resolve()),
        'source_split': split,
        'folder': folder,
        'frames': len(frames),
        'epsilon': epsilon,
        'step_size': cfg.step_size,
        'iterations': cfg.num_iterations if epsilon > 0 else 0,
        'attack': 'least_likely' if epsilon > 0 else None,
        'size': list(size),
        'checkpoint': meta or None,
        'linf_max': linf_max,
        'seconds': round(seconds, 2),
    }
    # The manifest goes last: a set without it is incomplete (and its split will not resolve).
    manifest = {'splits': {split: [folder, None]}, AE_MANIFEST_KEY: provenance}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return {
        **provenance,
        'out': str(out),
        'linf_ok': linf_max <= epsilon,
        'integer_valued': integer,
        'per_image_s': round(seconds / len(frames), 4),
    }
