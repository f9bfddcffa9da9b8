"""The Cityscapes directory layout, and data sets that read it (real or synthetic).

Layout (Cordts et al. 2016; the synthetic world writes exactly the same)::

    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   (and _labelTrainIds)
    <root>/gtCoarse/train_extra/<city>/<city>_<seq>_<frame>_gtCoarse_labelIds.png
    <root>/leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/camera/<split>/<city>/<city>_<seq>_<frame>_camera.json

Splits of the paper (Bär et al. 2019, sec. 4.1): the labeled set is ``train`` (fine labels),
the unlabeled set is ``train_extra`` (its coarse labels are never opened), and the official
``val`` set is split by city into a mini validation set (Lindau) and a mini test set
(Frankfurt + Münster). A synthetic root says in its ``tsa_synth.json`` manifest which folders
hold its mini val and mini test sets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from tsa_ros.data.camera import CameraModel
from tsa_ros.data.labels import IGNORE_ID, ids_to_train_ids
from tsa_ros.inference import frames_to_tensor, resize_frame, resize_labels

SPLIT_DIRS = ('train', 'val', 'test', 'train_extra')
#: The paper's split names -> (folder, cities); None = every city of the folder.
PAPER_SPLITS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    'train': ('train', None),
    'train_extra': ('train_extra', None),
    'val': ('val', None),
    'test': ('test', None),
    'minival': ('val', ('lindau',)),
    'minitest': ('val', ('frankfurt', 'munster')),
}
MANIFEST = 'tsa_synth.json'
_STEM = re.compile(r'^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})$')


class DataError(ValueError):
    """A data root or file that is missing or does not follow the Cityscapes layout."""


@dataclass(frozen=True, order=True)
class FrameId:
    """One frame of the Cityscapes naming scheme: ``<city>_<seq>_<frame>``."""

    city: str
    seq: int
    frame: int

    @property
    def stem(self) -> str:
        return f'{self.city}_{self.seq:06d}_{self.frame:06d}'

    @classmethod
    def parse(cls, name: str) -> FrameId:
        """Parse a file name such as ``aachen_000000_000019_leftImg8bit.png``."""
        stem = Path(name).name.split('_leftImg8bit')[0].split('_gt')[0].split('_camera')[0]
        match = _STEM.match(stem)
        if not match:
            raise DataError(f'not a Cityscapes file name: {name!r}')
        return cls(match['city'], int(match['seq']), int(match['frame']))


@dataclass(frozen=True)
class CityscapesLayout:
    """Paths of one data root in the Cityscapes layout."""

    root: Path

    def image(self, split: str, fid: FrameId, *, sequence: bool = False) -> Path:
        top = 'leftImg8bit_sequence' if sequence else 'leftImg8bit'
        return self.root / top / split / fid.city / f'{fid.stem}_leftImg8bit.png'

    def label(self, split: str, fid: FrameId, kind: str = 'labelIds', *, coarse=False) -> Path:
        gt = 'gtCoarse' if coarse else 'gtFine'
        return self.root / gt / split / fid.city / f'{fid.stem}_{gt}_{kind}.png'

    def camera(self, split: str, fid: FrameId) -> Path:
        return self.root / 'camera' / split / fid.city / f'{fid.stem}_camera.json'

    def manifest(self) -> dict | None:
        path = self.root / MANIFEST
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f'{path}: malformed manifest ({exc})') from exc

    def resolve_split(self, name: str) -> tuple[str, tuple[str, ...] | None]:
        """Folder and cities of a split name (``train``, ``minival``, ``minitest`` ...)."""
        manifest = self.manifest()
        splits = dict(PAPER_SPLITS)
        if manifest is not None:
            for key, (folder, cities) in manifest.get('splits', {}).items():
                splits[key] = (folder, tuple(cities) if cities else None)
        if name not in splits:
            raise DataError(f'unknown split {name!r}; choose from {sorted(splits)}')
        return splits[name]

    def frames(self, split: str, *, sequence: bool = False) -> list[FrameId]:
        """All frames of a split (paper names allowed), sorted; clear error when absent."""
        folder, cities = self.resolve_split(split)
        top = 'leftImg8bit_sequence' if sequence else 'leftImg8bit'
        base = self.root / top / folder
        if not self.root.is_dir():
            raise DataError(f'data root {self.root} does not exist')
        if not base.is_dir():
            raise DataError(
                f'{base} is missing: {self.root} has no {top}/{folder} folder '
                '(expected the Cityscapes layout; `tsa data synth` can generate one)'
            )
        if cities is not None:
            missing = [c for c in cities if not (base / c).is_dir()]
            if missing:
                raise DataError(f'split {split!r} needs cities {missing} under {base}')
        dirs = [base / c for c in cities] if cities else sorted(p for p in base.iterdir())
        found = sorted(FrameId.parse(p.name) for d in dirs for p in d.glob('*_leftImg8bit.png'))
        if not found:
            raise DataError(f'no *_leftImg8bit.png images for split {split!r} under {base}')
        return found


def read_rgb(path: Path) -> np.ndarray:
    """An 8-bit RGB image (H, W, 3); a missing or undecodable file is a DataError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f'cannot read image {path}: {exc.strerror}') from exc
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f'cannot decode image {path}')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    """A single-channel 8-bit label map (H, W); a DataError when missing or malformed."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f'cannot read label map {path}: {exc.strerror}') from exc
    label = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2 or label.dtype != np.uint8:
        raise DataError(f'{path} is not a single-channel 8-bit label map')
    return label


def write_png(path: Path, array: np.ndarray) -> None:
    """Write an RGB (H, W, 3) or label (H, W) uint8 array as PNG, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    ok, buf = cv2.imencode('.png', out)
    if not ok:
        raise DataError(f'cannot encode {path}')
    path.write_bytes(buf.tobytes())


# --------------------------------------------------------------------------- transforms
@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation: random scale, random crop, horizontal flip."""

    scale_range: tuple[float, float] = (0.75, 1.5)
    crop_size: tuple[int, int] | None = None  # (H, W); None = the (resized) image size
    hflip: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f'scale_range must satisfy 0 < low <= high, got {self.scale_range}')


def resize_pair(
    image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize to (H, W) by the inference path's rules (:mod:`tsa_ros.inference`): area or
    linear for the image, nearest for labels (no new classes)."""
    image = resize_frame(image, size)
    return image, None if label is None else resize_labels(label, size)


def augment_pair(
    image: np.ndarray, label: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random scale, crop (labels padded with ignore) and horizontal flip."""
    height, width = image.shape[:2]
    crop_h, crop_w = cfg.crop_size or (height, width)
    scale = rng.uniform(*cfg.scale_range)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    image, label = resize_pair(image, label, (new_h, new_w))
    pad_h, pad_w = max(0, crop_h - new_h), max(0, crop_w - new_w)
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
        label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=255)
    top = int(rng.integers(0, image.shape[0] - crop_h + 1))
    left = int(rng.integers(0, image.shape[1] - crop_w + 1))
    image = image[top : top + crop_h, left : left + crop_w]
    label = label[top : top + crop_h, left : left + crop_w]
    if cfg.hflip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float (3, H, W) gray values in [0, 255] (the model input)."""
    return frames_to_tensor(image)[0]


# --------------------------------------------------------------------------- data sets
@dataclass
class _Base(Dataset):
    root: str | Path
    split: str
    size: tuple[int, int] | None = None  # (H, W) the images are resized to, None = native
    layout: CityscapesLayout = field(init=False)
    frames: list[FrameId] = field(init=False)
    folder: str = field(init=False)

    def __post_init__(self) -> None:
        self.layout = CityscapesLayout(Path(self.root))
        self.folder, _ = self.layout.resolve_split(self.split)
        self.frames = self.layout.frames(self.split)

    def __len__(self) -> int:
        return len(self.frames)

    def image_path(self, index: int) -> Path:
        return self.layout.image(self.folder, self.frames[index])


@dataclass
class LabeledDataset(_Base):
    """Images with fine trainId labels: ``(image float (3,H,W) in [0,255], labels long (H,W))``.

    Labels are read from ``*_gtFine_labelIds.png`` (present in every Cityscapes download) and
    mapped to trainIds with the official table; ``*_labelTrainIds.png`` is the fallback.
    """

    augment: AugmentConfig | None = None
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (deterministic per seed, epoch and index)."""
        self.epoch = epoch

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Native-size uint8 image (H, W, 3) and trainId map (H, W)."""
        fid = self.frames[index]
        image = read_rgb(self.image_path(index))
        ids_path = self.layout.label(self.folder, fid, 'labelIds')
        train_path = self.layout.label(self.folder, fid, 'labelTrainIds')
        if ids_path.is_file():
            label = ids_to_train_ids(read_label(ids_path))
        elif train_path.is_file():
            label = read_label(train_path)
        else:
            raise DataError(f'no fine label for {fid.stem}: {ids_path} is missing')
        if label.shape != image.shape[:2]:
            raise DataError(f'{fid.stem}: label {label.shape} and image {image.shape[:2]} differ')
        return image, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.read(index)
        if self.size is not None:
            image, label = resize_pair(image, label, self.size)
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image, label = augment_pair(image, label, self.augment, rng)
        return to_tensor(image), torch.from_numpy(label.astype(np.int64))


@dataclass
class UnlabeledDataset(_Base):
    """Images only (the adaptive student's stream). Label files are never opened."""

    split: str = 'train_extra'

    def __getitem__(self, index: int) -> torch.Tensor:
        image = read_rgb(self.image_path(index))
        if self.size is not None:
            image, _ = resize_pair(image, None, self.size)
        return to_tensor(image)


@dataclass(frozen=True)
class Snippet:
    """A 30-frame sequence snippet; ``annotated`` is the frame that has a fine label."""

    split: str
    city: str
    seq: int
    frames: tuple[int, ...]
    annotated: FrameId | None


class SequenceDataset:
    """The ``leftImg8bit_sequence`` snippets of a split, for replay and rosbag export."""

    def __init__(self, root: str | Path, split: str = 'val') -> None:
        self.layout = CityscapesLayout(Path(root))
        self.folder, _ = self.layout.resolve_split(split)
        frames = self.layout.frames(split, sequence=True)
        labeled = set()
        try:
            labeled = set(self.layout.frames(split))
        except DataError:
            pass  # a split without annotated frames still replays
        groups: dict[tuple[str, int], list[int]] = {}
        for fid in frames:
            groups.setdefault((fid.city, fid.seq), []).append(fid.frame)
        self.snippets = []
        for (city, seq), numbers in sorted(groups.items()):
            annotated = [
                FrameId(city, seq, n) for n in numbers if FrameId(city, seq, n) in labeled
            ]
            self.snippets.append(
                Snippet(
                    self.folder, city, seq, tuple(numbers), annotated[0] if annotated else None
                )
            )

    def __len__(self) -> int:
        return len(self.snippets)

    def camera(self, snippet: Snippet, width: int, height: int) -> CameraModel:
        """The snippet's camera json if present, else Cityscapes' typical calibration.

        The json's intrinsics refer to the annotated image's size (2048x1024 for real
        Cityscapes); they are rescaled to ``width`` x ``height``.
        """
        fid = snippet.annotated or FrameId(snippet.city, snippet.seq, snippet.frames[0])
        path = self.layout.camera(snippet.split, fid)
        if not path.is_file():
            return CameraModel.cityscapes_default(width, height)
        data = json.loads(path.read_text())
        native = data.get('tsa_image_size', [2048, 1024])  # synthetic roots store their size
        return CameraModel.from_cityscapes_json(data, *native).scaled(width, height)

    def iter_frames(
        self, snippet: Snippet
    ) -> Iterator[tuple[FrameId, np.ndarray, np.ndarray | None]]:
        """``(frame id, rgb, trainIds or None)`` for each frame of a snippet, in order."""
        for number in snippet.frames:
            fid = FrameId(snippet.city, snippet.seq, number)
            rgb = read_rgb(self.layout.image(snippet.split, fid, sequence=True))
            label = None
            if fid == snippet.annotated:
                label = ids_to_train_ids(read_label(self.layout.label(snippet.split, fid)))
            yield fid, rgb, label


__all__ = [
    'IGNORE_ID',
    'AugmentConfig',
    'CityscapesLayout',
    'DataError',
    'FrameId',
    'LabeledDataset',
    'SequenceDataset',
    'Snippet',
    'UnlabeledDataset',
    'augment_pair',
    'read_label',
    'read_rgb',
    'resize_pair',
    'to_tensor',
    'write_png',
]
