"""Tests for tsa_ros.models: ERFNet / DeepLabV3+ wrappers, taps, checkpoints, complexity."""

from __future__ import annotations

import threading

import pytest
import torch

from tsa_ros.models import (
    CheckpointError,
    ModelConfig,
    SegmentationNet,
    build_model,
    count_conv_macs,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
    state_dict_from_bytes,
    state_dict_to_bytes,
    weights_sha256,
)
from tsa_ros.models.erfnet import ERFNet, convert_reference_state_dict

ERFNET_TAPS = tuple(f'encoder.{i}' for i in range(16)) + tuple(f'decoder.{i}' for i in range(6))
DEEPLAB_R18 = dict(arch='deeplabv3plus', backbone='resnet18', input_size=(64, 96))


def _erfnet(seed: int = 0, **kwargs) -> SegmentationNet:
    torch.manual_seed(seed)
    return build_model(ModelConfig(input_size=(32, 64), **kwargs))


def _image(h: int = 32, w: int = 64, n: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 255.0


@pytest.fixture(scope='module')
def deeplab_r18_os8() -> SegmentationNet:
    torch.manual_seed(0)
    return build_model(ModelConfig(output_stride=8, **DEEPLAB_R18)).eval()


# ------------------------------------------------------------------------------- config
def test_config_round_trip_and_validation():
    cfg = ModelConfig(
        arch='deeplabv3plus', backbone='resnet18', input_size=[64, 96], feature_layers=['aspp']
    )
    assert cfg.input_size == (64, 96) and cfg.feature_layers == ('aspp',)
    d = cfg.to_dict()
    assert d['input_size'] == [64, 96]
    assert ModelConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match='unknown key'):
        ModelConfig.from_dict({**d, 'depth': 3})
    with pytest.raises(ValueError, match='arch'):
        ModelConfig(arch='unet')
    with pytest.raises(ValueError, match='backbone'):
        ModelConfig(arch='deeplabv3plus', backbone='vgg16')
    with pytest.raises(ValueError, match='output_stride'):
        ModelConfig(output_stride=32)
    with pytest.raises(ValueError, match='num_classes'):
        ModelConfig(num_classes=0)
    with pytest.raises(ValueError, match='input_size'):
        ModelConfig(input_size=(500, 1000))  # erfnet needs multiples of 8


# ------------------------------------------------------------------------------- ERFNet
def test_erfnet_parameter_count_matches_reference():
    assert count_parameters(_erfnet(num_classes=19)) == 2_064_191


def test_erfnet_macs_on_meta():
    model = _erfnet()
    macs = count_conv_macs(model, input_size=(512, 1024))
    assert abs(macs / 1e9 - 26.60) < 0.01
    assert next(model.parameters()).device.type == 'cpu'  # original untouched
    # Arbitrary module path (deepcopy to meta) gives the same figure.
    assert count_conv_macs(model.net, input_size=(512, 1024)) == macs


def test_erfnet_logits_shape_and_posteriors():
    model = _erfnet().eval()
    x = _image(64, 128, n=2)
    logits = model(x)
    assert logits.shape == (2, 19, 64, 128)
    post = model.posteriors(x)
    assert torch.allclose(post.sum(dim=1), torch.ones(2, 64, 128), atol=1e-5)
    assert (post >= 0).all()
    assert model.predict(x).shape == (2, 64, 128)


def test_erfnet_rejects_size_not_divisible_by_8():
    model = _erfnet().eval()
    with pytest.raises(ValueError, match='divisible by 8.*36x64'):
        model(_image(36, 64))


def test_normalisation_happens_inside():
    model = _erfnet().eval()
    x = _image()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        expected, _ = model.net((x - mean) / std)
        out = model(x)
        assert torch.allclose(out, expected, atol=1e-5)
        model.mean.zero_()
        assert not torch.allclose(model(x), out, atol=1e-3)
    assert 'mean' not in model.state_dict() and not any(
        p is model.mean for p in model.parameters()
    )


def test_erfnet_feature_taps_and_gradient_flow():
    model = _erfnet()
    assert model.feature_layers == ERFNET_TAPS
    assert model.available_feature_layers() == ERFNET_TAPS
    logits, feats = model(_image(), return_features=True)
    assert list(feats) == list(ERFNET_TAPS)
    assert feats['encoder.7'].shape == (1, 128, 4, 8)
    assert feats['decoder.5'].shape == (1, 16, 16, 32)
    feats['encoder.4'].sum().backward()
    enc0 = model.net.encoder[0].conv.weight.grad
    assert enc0 is not None and enc0.abs().sum() > 0
    assert model.net.encoder[10].conv3x1_1.weight.grad is None  # after the tap
    assert model.net.output_conv.weight.grad is None
    # Plain calls return only logits: no features kept around.
    assert isinstance(model(_image()), torch.Tensor)


def test_feature_layer_selection_is_in_network_order():
    model = _erfnet(feature_layers=('decoder.1', 'encoder.3'))
    _, feats = model(_image(), return_features=True)
    assert list(feats) == ['encoder.3', 'decoder.1']
    model.set_feature_layers(None)
    assert len(model.feature_layers) == 22 and model.config.feature_layers is None


def test_unknown_feature_layer_is_rejected():
    with pytest.raises(ValueError, match="unknown feature layer.*'encoder.99'.*available"):
        _erfnet(feature_layers=('encoder.99',))


def test_deterministic_initialisation():
    a, b = _erfnet(seed=3), _erfnet(seed=3)
    assert weights_sha256(a.state_dict()) == weights_sha256(b.state_dict())
    assert weights_sha256(_erfnet(seed=4).state_dict()) != weights_sha256(a.state_dict())


def test_two_models_run_concurrently_in_threads():
    models = [_erfnet(seed=s).eval() for s in (0, 1)]
    inputs = [_image(seed=s) for s in (5, 6)]
    with torch.no_grad():
        expected = [m(x, return_features=True) for m, x in zip(models, inputs, strict=True)]
    results: dict[int, tuple] = {}

    def work(i: int) -> None:
        with torch.no_grad():
            for _ in range(3):
                results[i] = models[i](inputs[i], return_features=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        logits, feats = results[i]
        assert torch.equal(logits, expected[i][0])
        assert list(feats) == list(expected[i][1])


def test_convert_reference_state_dict():
    net = ERFNet(5)
    ours = net.state_dict()
    ref = {}
    for k, v in ours.items():  # rename to the eromera/erfnet_pytorch layout
        stage, rest = k.split('.', 1)
        if stage == 'output_conv':
            ref[f'module.decoder.output_conv.{rest}'] = v
            continue
        idx, tail = rest.split('.', 1)
        if stage == 'encoder':
            key = 'encoder.initial_block' if idx == '0' else f'encoder.layers.{int(idx) - 1}'
        else:
            key = f'decoder.layers.{idx}'
        ref[f'module.{key}.{tail}'] = v
    ref['module.encoder.output_conv.weight'] = torch.zeros(5, 128, 1, 1)  # unused head
    converted = convert_reference_state_dict(ref)
    assert list(converted) == list(ours)
    ERFNet(5).load_state_dict(converted, strict=True)


# --------------------------------------------------------------------------- DeepLabV3+
@pytest.mark.parametrize('output_stride', [8, 16])
def test_deeplab_logits_at_input_size(output_stride, deeplab_r18_os8):
    if output_stride == 8:
        model = deeplab_r18_os8
    else:
        torch.manual_seed(0)
        model = build_model(ModelConfig(output_stride=16, **DEEPLAB_R18)).eval()
    with torch.no_grad():
        logits = model(_image(65, 97))
    assert logits.shape == (1, 19, 65, 97)
    assert torch.isfinite(logits).all()


def test_deeplab_feature_taps(deeplab_r18_os8):
    model = deeplab_r18_os8
    assert model.feature_layers == (
        'backbone.layer1',
        'backbone.layer2',
        'backbone.layer3',
        'backbone.layer4',
        'aspp',
        'decoder',
    )
    with torch.no_grad():
        _, feats = model(_image(64, 96), return_features=True)
    assert list(feats) == list(model.feature_layers)
    assert feats['backbone.layer1'].shape == (1, 64, 16, 24)
    assert feats['backbone.layer4'].shape == (1, 512, 8, 12)  # output stride 8
    assert feats['aspp'].shape == (1, 256, 8, 12)
    assert feats['decoder'].shape == (1, 256, 16, 24)
    with pytest.raises(ValueError, match='at least 32'):
        model(_image(16, 96))


def test_deeplab_trains_with_batch_of_one():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**DEEPLAB_R18)).train()
    model(_image(32, 32)).mean().backward()
    assert model.net.aspp.pooling.conv.weight.grad is not None


def test_teacher_much_larger_than_student():
    student = count_parameters(_erfnet())
    with torch.device('meta'):  # parameter counting only: no memory, no init cost
        r50 = build_model(ModelConfig(arch='deeplabv3plus', backbone='resnet50'))
        r101 = build_model(ModelConfig(arch='deeplabv3plus', backbone='resnet101'))
    assert count_parameters(r50) > 10 * student
    assert count_parameters(r101) > count_parameters(r50)


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path):
    model = _erfnet(feature_layers=('encoder.15',))
    model.train()
    model(_image(n=2))  # update BN running statistics so they differ from the defaults
    model.eval()
    path = save_checkpoint(tmp_path / 'sub' / 's.pt', model, extra={'epoch': 3, 'miou': 0.5})
    assert not [p for p in path.parent.iterdir() if p.name.endswith('.tmp')]
    loaded, meta = load_checkpoint(path, expected=model.config)
    assert not loaded.training
    assert meta['extra'] == {'epoch': 3, 'miou': 0.5}
    assert meta['sha256'] == weights_sha256(model.state_dict())
    assert loaded.feature_layers == ('encoder.15',)
    x = _image()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_checkpoint_corrupted_weights(tmp_path):
    path = save_checkpoint(tmp_path / 'c.pt', _erfnet())
    payload = torch.load(path, weights_only=True)
    payload['state_dict']['net.encoder.0.conv.weight'][0, 0, 0, 0] += 1.0
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match='sha256'):
        load_checkpoint(path)
    # A flipped bit inside the stored tensor data is caught the same way.
    path = save_checkpoint(tmp_path / 'f.pt', _erfnet())
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match='corrupted: sha256'):
        load_checkpoint(path)


def test_checkpoint_garbage_and_missing_files(tmp_path):
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a checkpoint at all')
    with pytest.raises(CheckpointError, match='cannot read'):
        load_checkpoint(garbage)
    foreign = tmp_path / 'foreign.pt'
    torch.save({'weights': torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match='not a tsa_ros checkpoint'):
        load_checkpoint(foreign)
    with pytest.raises(TypeError, match='plain types'):
        save_checkpoint(tmp_path / 'x.pt', _erfnet(), extra={'bad': object()})
    with pytest.raises(CheckpointError, match='not found'):
        load_checkpoint(tmp_path / 'missing.pt')


def test_checkpoint_expected_config_mismatch(tmp_path):
    path = save_checkpoint(tmp_path / 'm.pt', _erfnet())
    with pytest.raises(CheckpointError, match=r'num_classes is 19 .*but 7 was expected'):
        load_checkpoint(path, expected=ModelConfig(num_classes=7, input_size=(32, 64)))
    with pytest.raises(CheckpointError, match='input_size'):
        load_checkpoint(path, expected=ModelConfig())
    with pytest.raises(CheckpointError, match="arch is 'erfnet'"):
        load_checkpoint(path, expected=ModelConfig(arch='deeplabv3plus', input_size=(32, 64)))


def test_state_dict_bytes_deterministic_and_round_trip():
    model = _erfnet()
    sd = model.state_dict()
    blob = state_dict_to_bytes(sd)
    assert blob == state_dict_to_bytes(_erfnet().state_dict())  # same seed, fresh model
    back = state_dict_from_bytes(blob)
    assert list(back) == list(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)
    back['net.output_conv.bias'] += 1.0  # returned tensors are writable and independent
    assert weights_sha256(back) != weights_sha256(sd)
    with pytest.raises(CheckpointError):
        state_dict_from_bytes(blob[:-3])


def _blob(entries, data=b''):
    import json
    import struct

    from tsa_ros.models.checkpoint import MAGIC

    header = json.dumps({'tensors': entries}).encode()
    return MAGIC + struct.pack('<Q', len(header)) + header + data


@pytest.mark.parametrize(
    ('entries', 'data', 'match'),
    [
        ({'a': 1}, b'', 'not a list'),
        ([['w', 'float32', [2]]], b'', 'malformed'),
        ([[1, 'float32', [1], 4]], b'\x00' * 4, 'malformed'),
        ([['w', 'complex64', [1], 8]], b'\x00' * 8, 'unknown dtype'),
        ([['w', 'float32', 'big', 4]], b'\x00' * 4, 'malformed shape'),
        ([['w', 'float32', [-1], 4]], b'\x00' * 4, 'malformed shape'),
        ([['w', 'float32', [2], 5]], b'\x00' * 5, 'inconsistent'),
        ([['w', 'float32', [1], 3]], b'\x00' * 3, 'inconsistent'),
        ([['w', 'float32', [10**12], 4 * 10**12]], b'', 'truncated'),
        ([['w', 'float32', [1], '4']], b'\x00' * 4, 'inconsistent'),
    ],
)
def test_malformed_weight_blobs_are_one_checkpoint_error(entries, data, match):
    """A signed payload from a buggy key holder must fail as CheckpointError, nothing else."""
    with pytest.raises(CheckpointError, match=match):
        state_dict_from_bytes(_blob(entries, data))
    assert state_dict_from_bytes(_blob([['w', 'float32', [1], 4]], b'\x00' * 4))['w'] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_forward_and_checkpoint(tmp_path):
    model = _erfnet().cuda().eval()
    assert model.mean.is_cuda
    x = _image().cuda()
    logits, feats = model(x, return_features=True)
    assert logits.is_cuda and len(feats) == 22
    path = save_checkpoint(tmp_path / 'g.pt', model)
    loaded, _ = load_checkpoint(path, map_location='cuda')
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
