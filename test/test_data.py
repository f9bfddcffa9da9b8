"""The synthetic world on disk, the Cityscapes layout and loaders, and the rosbag2 export."""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label, name2label

from tsa_ros.cli import main
from tsa_ros.data.bag import BagReader
from tsa_ros.data.cityscapes import (
    AugmentConfig,
    CityscapesLayout,
    DataError,
    FrameId,
    LabeledDataset,
    SequenceDataset,
    UnlabeledDataset,
    read_label,
    read_rgb,
    write_png,
)
from tsa_ros.data.generate import (
    ANNOTATED_INDEX,
    CITIES,
    PRESETS,
    SNIPPET_LENGTH,
    SynthPreset,
    generate,
)
from tsa_ros.data.labels import CLASS_NAMES, TRAIN_COLORS, colorize, ids_to_train_ids


def digest_tree(root, pattern='*.png'):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob(pattern))
    }


def test_labels_come_from_cityscapes_scripts():
    assert len(CLASS_NAMES) == 19 and CLASS_NAMES[0] == 'road' and CLASS_NAMES[18] == 'bicycle'
    assert tuple(TRAIN_COLORS[13]) == name2label['car'].color
    ids = np.array([[7, 26, 1, 9]], np.uint8)  # road, car, ego vehicle, parking
    np.testing.assert_array_equal(ids_to_train_ids(ids), [[0, 13, 255, 255]])
    assert tuple(colorize(np.array([[255]], np.uint8))[0, 0]) == (0, 0, 0)


def test_tiny_preset_writes_the_cityscapes_layout(tiny_root):
    preset = PRESETS['tiny']
    width, height = preset.size
    layout = CityscapesLayout(tiny_root)
    for split, count in preset.counts.items():
        images = sorted((tiny_root / 'leftImg8bit' / split).rglob('*_leftImg8bit.png'))
        assert len(images) == count
        for path in images:
            fid = FrameId.parse(path.name)
            assert path.parent.name == fid.city and fid.city in CITIES[split]
            assert fid.frame == ANNOTATED_INDEX
            assert path.name == f'{fid.city}_{fid.seq:06d}_{fid.frame:06d}_leftImg8bit.png'
            assert read_rgb(path).shape == (height, width, 3)
            assert layout.camera(split, fid).is_file()
            if split == 'train_extra':
                assert not layout.label(split, fid).exists(), 'train_extra has no fine labels'
                coarse = read_label(layout.label(split, fid, coarse=True))
                assert (coarse == 0).any(), 'coarse labels leave borders unlabeled'
            else:
                ids = read_label(layout.label(split, fid, 'labelIds'))
                train_ids = read_label(layout.label(split, fid, 'labelTrainIds'))
                assert ids.shape == (height, width)
                assert set(np.unique(ids)) <= set(id2label)
                assert set(np.unique(train_ids)) <= set(range(19)) | {255}
                np.testing.assert_array_equal(ids_to_train_ids(ids), train_ids)
    manifest = json.loads((tiny_root / 'tsa_synth.json').read_text())
    assert manifest['splits']['minival'] == ['val', None]
    assert abs(sum(manifest['class_histogram'].values()) - 1) < 1e-3


def test_sequences_are_30_frames_around_the_annotated_one(tiny_root):
    data = SequenceDataset(tiny_root, 'val')
    assert len(data) == PRESETS['tiny'].sequences['val']
    snippet = data.snippets[0]
    assert snippet.frames == tuple(range(SNIPPET_LENGTH))
    assert snippet.annotated == FrameId(snippet.city, snippet.seq, ANNOTATED_INDEX)
    frames = list(data.iter_frames(snippet))
    labeled = [(fid, rgb) for fid, rgb, label in frames if label is not None]
    assert [fid.frame for fid, _ in labeled] == [ANNOTATED_INDEX]
    # The 20th frame of the snippet is the annotated image itself.
    annotated = read_rgb(CityscapesLayout(tiny_root).image('val', snippet.annotated))
    np.testing.assert_array_equal(labeled[0][1], annotated)
    # Ego-motion: consecutive frames are closer than frames far apart.
    rgb = [f[1].astype(np.float32) for f in frames]
    near = np.mean([np.abs(rgb[i + 1] - rgb[i]).mean() for i in range(0, 29, 4)])
    far = np.abs(rgb[29] - rgb[0]).mean()
    assert 0 < near < far


def test_splits_are_disjoint(tiny_root):
    layout = CityscapesLayout(tiny_root)
    cities = {
        s: {f.city for f in layout.frames(s)} for s in ('train', 'train_extra', 'val', 'test')
    }
    for a in cities:
        for b in cities:
            assert a == b or not cities[a] & cities[b], f'{a} and {b} share a city'
    hashes = {
        s: {
            hashlib.sha256(p.read_bytes()).digest()
            for p in (tiny_root / 'leftImg8bit' / s).rglob('*.png')
        }
        for s in cities
    }
    assert not hashes['train'] & hashes['train_extra'], 'an image is in train and train_extra'
    assert not (hashes['train'] | hashes['train_extra']) & (hashes['val'] | hashes['test'])


def test_generation_is_deterministic_per_seed(tiny_root, tmp_path):
    again = tmp_path / 'again'
    generate(again, 'tiny', seed=3, workers=1, progress=False)
    assert digest_tree(again) == digest_tree(tiny_root)
    small = SynthPreset('small', (128, 64), {'train': 2})
    trees = []
    for seed in (3, 4):
        generate(tmp_path / f'seed{seed}', small, seed=seed, progress=False)
        trees.append(digest_tree(tmp_path / f'seed{seed}', '*_leftImg8bit.png'))
    assert trees[0].keys() == trees[1].keys() and len(trees[0]) == 2
    assert all(trees[0][k] != trees[1][k] for k in trees[0]), 'another seed, other scenes'


def test_generate_refuses_to_overwrite(tiny_root):
    with pytest.raises(DataError, match='not empty'):
        generate(tiny_root, 'tiny', progress=False)


def test_labeled_dataset_resizes_and_augments(tiny_root):
    data = LabeledDataset(tiny_root, 'minival', size=(64, 128))
    assert len(data) == PRESETS['tiny'].counts['val']
    image, label = data[0]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 128)
    assert 0 <= image.min() and image.max() <= 255
    assert label.dtype == torch.int64 and label.shape == (64, 128)
    assert set(label.unique().tolist()) <= set(range(19)) | {255}

    aug = LabeledDataset(
        tiny_root,
        'train',
        size=(64, 128),
        seed=1,
        augment=AugmentConfig(scale_range=(1.0, 1.5), crop_size=(48, 96)),
    )
    a1, l1 = aug[2]
    a2, l2 = aug[2]
    assert a1.shape == (3, 48, 96) and l1.shape == (48, 96)
    assert torch.equal(a1, a2) and torch.equal(l1, l2), 'same seed/epoch/index -> same draw'
    aug.set_epoch(1)
    assert not torch.equal(aug[2][0], a1)


def test_unlabeled_loader_never_opens_a_label_file(tiny_root):
    opened = []

    def audit(event, args):
        if event == 'open' and isinstance(args[0], str | Path):
            opened.append(str(args[0]))

    sys.addaudithook(audit)  # hooks cannot be removed; this one only records
    data = UnlabeledDataset(tiny_root, size=(64, 128))
    images = [data[i] for i in range(len(data))]
    assert len(images) == PRESETS['tiny'].counts['train_extra']
    assert all(x.shape == (3, 64, 128) for x in images)
    mine = [p for p in opened if str(tiny_root) in p]
    assert len(mine) >= len(images), 'the audit hook saw the image reads'
    assert not [p for p in mine if '/gtCoarse/' in p or '/gtFine/' in p]


def test_real_cityscapes_paper_splits_by_city(tmp_path):
    """Mini val = val/lindau, mini test = val/frankfurt + val/munster (no manifest)."""
    layout = CityscapesLayout(tmp_path)
    rgb = np.zeros((16, 32, 3), np.uint8)
    ids = np.full((16, 32), 7, np.uint8)
    for city, n in (('lindau', 2), ('frankfurt', 3), ('munster', 1)):
        for seq in range(n):
            fid = FrameId(city, seq, 19)
            write_png(layout.image('val', fid), rgb)
            write_png(layout.label('val', fid), ids)  # only labelIds, as in the download
    assert [f.city for f in LabeledDataset(tmp_path, 'minival').frames] == ['lindau'] * 2
    test = LabeledDataset(tmp_path, 'minitest')
    assert sorted({f.city for f in test.frames}) == ['frankfurt', 'munster'] and len(test) == 4
    assert int(test[0][1].unique()) == 0  # labelIds mapped to trainId road
    with pytest.raises(DataError, match='frankfurt'):
        shutil.rmtree(tmp_path / 'leftImg8bit' / 'val' / 'frankfurt')
        LabeledDataset(tmp_path, 'minitest')


def test_missing_or_malformed_roots_give_one_clear_error(tmp_path, capsys):
    with pytest.raises(DataError, match='does not exist'):
        LabeledDataset(tmp_path / 'nowhere', 'train')
    with pytest.raises(DataError, match='leftImg8bit/train'):
        LabeledDataset(tmp_path, 'train')
    with pytest.raises(DataError, match='unknown split'):
        LabeledDataset(tmp_path, 'training')
    fid = FrameId('x', 0, 19)
    layout = CityscapesLayout(tmp_path)
    write_png(layout.image('train', fid), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match='no fine label'):
        LabeledDataset(tmp_path, 'train')[0]
    layout.label('train', fid).parent.mkdir(parents=True)
    layout.label('train', fid).write_bytes(b'not a png')
    with pytest.raises(DataError, match='label map'):
        LabeledDataset(tmp_path, 'train')[0]
    assert (
        main(['data', 'bag', '--root', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'b')])
        == 2
    )
    assert 'does not exist' in capsys.readouterr().err


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_tsa_data_bag_round_trip(tiny_root, tmp_path, storage):
    out = tmp_path / f'val_{storage}'
    assert (
        main(
            [
                'data',
                'bag',
                '--root',
                str(tiny_root),
                '--split',
                'val',
                '--out',
                str(out),
                '--format',
                storage,
            ]
        )
        == 0
    )
    data = SequenceDataset(tiny_root, 'val')
    expected = [(rgb, label) for s in data.snippets for _, rgb, label in data.iter_frames(s)]
    with BagReader(out) as reader:
        frames = list(reader.frames())
        topics = reader.topics
    assert len(frames) == len(expected) == 2 * SNIPPET_LENGTH
    assert topics['/camera/image_raw'][1] == len(expected)
    assert topics['/camera/ground_truth'][1] == 2
    stamps = [f.stamp_ns for f in frames]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    period = np.diff(stamps[:SNIPPET_LENGTH])
    assert np.allclose(period, 1e9 / 17, atol=1)
    for frame, (rgb, label) in zip(frames, expected, strict=True):
        assert frame.image.tobytes() == rgb.tobytes()
        if label is None:
            assert frame.ground_truth is None
        else:
            assert frame.ground_truth.tobytes() == label.tobytes()
    cam = frames[0].camera
    assert (cam.width, cam.height) == PRESETS['tiny'].size
    assert 0 < cam.cx < cam.width and cam.fx > 0
