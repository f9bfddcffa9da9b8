"""The one inference path: resize rules and the Predictor against hand-composed references."""

import copy

import numpy as np
import pytest
import torch

from tsa_ros.inference import (
    Predictor,
    as_numpy,
    frames_to_tensor,
    has_bf16,
    resize_frame,
    resize_labels,
    resize_posteriors,
    resolve_device,
    scaled_size,
)
from tsa_ros.models import ModelConfig, build_model


@pytest.fixture(scope='module')
def erfnet():
    torch.manual_seed(0)
    return build_model(ModelConfig(arch='erfnet', num_classes=5, input_size=(16, 32))).eval()


def test_shrinking_a_frame_averages_blocks():
    frame = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 4
    out = resize_frame(frame, (2, 2))
    blocks = frame.reshape(2, 2, 2, 2, 3).astype(float).mean(axis=(1, 3))  # hand-made area
    np.testing.assert_allclose(out, np.round(blocks), atol=0.5)
    assert out.dtype == np.uint8


def test_enlarging_a_frame_is_linear_not_area():
    frame = np.zeros((1, 2, 3), np.uint8)
    frame[0, 1] = 100
    out = resize_frame(frame, (1, 4))
    # Half-pixel centres: source x = (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped).
    np.testing.assert_array_equal(out[0, :, 0], [0, 25, 75, 100])


def test_one_axis_growing_counts_as_enlarging():
    frame = np.zeros((4, 2, 3), np.uint8)
    frame[:, 1] = 100
    out = resize_frame(frame, (2, 4))  # height shrinks, width grows: linear
    np.testing.assert_array_equal(out[0, :, 0], [0, 25, 75, 100])


def test_same_size_is_returned_unchanged():
    frame = np.zeros((5, 7, 3), np.uint8)
    assert resize_frame(frame, (5, 7)) is frame
    with pytest.raises(ValueError, match='positive'):
        resize_frame(frame, (0, 7))


def test_labels_resize_by_nearest():
    labels = np.array([[1, 2], [3, 4]], np.uint8)
    out = resize_labels(labels, (4, 4))
    np.testing.assert_array_equal(out, np.kron(labels, np.ones((2, 2), np.uint8)))
    assert set(np.unique(resize_labels(labels, (3, 5)))) <= {1, 2, 3, 4}


def test_posteriors_shrink_by_area_and_stay_normalised():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 4, 6)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    out = resize_posteriors(probs, (2, 3))
    assert isinstance(out, np.ndarray) and out.shape == (3, 2, 3)
    np.testing.assert_allclose(out, probs.reshape(3, 2, 2, 3, 2).mean(axis=(2, 4)), atol=1e-6)
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-6)


def test_posteriors_enlarge_bilinearly_and_renormalise():
    probs = torch.tensor([[[0.0, 2.0]], [[2.0, 0.0]]])[None]  # (1, 2, 1, 2), unnormalised
    out = resize_posteriors(probs, (1, 4))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 1, 4)
    np.testing.assert_allclose(out[0, 0, 0].numpy(), [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(out.sum(1).numpy(), 1.0, atol=1e-6)


def test_frames_to_tensor_copies_read_only_views():
    frame = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    frame.flags.writeable = False
    x = frames_to_tensor(frame)
    assert x.shape == (1, 3, 2, 3) and x.dtype == torch.float32
    assert x[0, 2, 1, 0] == frame[1, 0, 2]
    with pytest.raises(ValueError, match='RGB'):
        frames_to_tensor(np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match='differ in size'):
        frames_to_tensor([np.zeros((2, 3, 3), np.uint8), np.zeros((3, 3, 3), np.uint8)])


def test_devices_and_numpy_helpers():
    assert resolve_device('cpu') == torch.device('cpu')
    assert resolve_device('auto').type in ('cpu', 'cuda')
    with pytest.raises(ValueError, match='device'):
        resolve_device('tpu')
    assert as_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32
    assert scaled_size((21, 37), 0.25) == (5, 9) and scaled_size((2, 2), 0.01) == (1, 1)


def _reference(model, frame, size, scale=None):
    """The rule composed by hand: area/linear in, forward, argmax, nearest back."""
    h, w = frame.shape[:2]
    import cv2

    shrink = size[0] <= h and size[1] <= w
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    net_in = cv2.resize(frame, (size[1], size[0]), interpolation=interp)
    x = torch.from_numpy(net_in.astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = model(x)
    labels = logits.argmax(1)[0].numpy().astype(np.uint8)
    labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    probs = None
    if scale is not None:
        probs = torch.softmax(logits, 1)
        target = (max(1, round(h * scale)), max(1, round(w * scale)))
        mode = 'area' if target[0] <= size[0] and target[1] <= size[1] else 'bilinear'
        kwargs = {} if mode == 'area' else {'align_corners': False}
        probs = torch.nn.functional.interpolate(probs, size=target, mode=mode, **kwargs)
        probs = (probs / probs.sum(1, keepdim=True))[0].numpy()
    return labels, probs


@pytest.mark.parametrize('frame_size', [(37, 61), (8, 12), (16, 32)])
def test_predictor_matches_the_hand_composed_path(erfnet, frame_size):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (*frame_size, 3), dtype=np.uint8)
    predictor = Predictor(erfnet, device='cpu', input_size=(16, 32))
    out = predictor.predict(frame, posteriors_scale=0.5)
    labels, probs = _reference(erfnet, frame, (16, 32), 0.5)
    assert out.labels.shape == frame_size and out.labels.dtype == np.uint8
    np.testing.assert_array_equal(out.labels, labels)
    assert out.posteriors.shape == probs.shape
    np.testing.assert_allclose(out.posteriors, probs, atol=1e-5)
    assert predictor.predict(frame).posteriors is None


def test_predictor_batch_equals_single_frames(erfnet):
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (20, 40, 3), dtype=np.uint8) for _ in range(3)]
    predictor = Predictor(erfnet, device='cpu', input_size=(16, 32))
    batch = predictor.predict_batch(frames, posteriors_scale=0.25)
    for frame, result in zip(frames, batch, strict=True):
        single = predictor.predict(frame, posteriors_scale=0.25)
        np.testing.assert_array_equal(result.labels, single.labels)
        np.testing.assert_allclose(result.posteriors, single.posteriors, atol=1e-5)


def test_predictor_at_frame_size_checks_the_network_rule(erfnet):
    predictor = Predictor(erfnet, device='cpu')  # no input size: the frame's own
    with pytest.raises(ValueError, match='divisible by 8'):
        predictor.check_frame(21, 37)
    frame = np.zeros((24, 40, 3), np.uint8)
    assert predictor.predict(frame).labels.shape == (24, 40)
    with pytest.raises(ValueError, match='posteriors_scale'):
        predictor.predict(frame, posteriors_scale=1.5)
    with pytest.raises(ValueError, match='divisible by 8'):
        Predictor(erfnet, device='cpu', input_size=(20, 30))


def test_with_weights_swaps_a_copy_and_refuses_misfits(erfnet):
    predictor = Predictor(erfnet, device='cpu', input_size=(16, 32))
    frame = np.random.default_rng(3).integers(0, 256, (16, 32, 3), dtype=np.uint8)
    before = predictor.predict(frame).labels
    state = {k: torch.zeros_like(v) for k, v in erfnet.state_dict().items()}
    zeroed = predictor.with_weights(state)
    assert zeroed.model is not predictor.model and zeroed.input_size == (16, 32)
    np.testing.assert_array_equal(predictor.predict(frame).labels, before)  # untouched
    assert not np.array_equal(zeroed.predict(frame).labels, before)
    with pytest.raises(ValueError, match='do not fit'):
        predictor.with_weights({'nonsense': torch.zeros(1)})
    predictor.warmup((16, 32))


def test_overlay_blends_the_mask_over_the_frame():
    from tsa_ros.data.labels import colorize, overlay

    rgb = np.full((2, 2, 3), 100, np.uint8)
    color = colorize(np.zeros((2, 2), np.uint8))  # road: (128, 64, 128)
    np.testing.assert_array_equal(overlay(rgb, color, 0.5)[0, 0], [114, 82, 114])
    np.testing.assert_array_equal(overlay(rgb, color, 0.0), rgb)
    with pytest.raises(ValueError, match='alpha'):
        overlay(rgb, color, 1.5)


@pytest.mark.parametrize('backend', ['channels_last', 'bf16'])
def test_fast_backends_agree_with_eager(erfnet, backend):
    """fp32 backends: labels >= 99.9 % equal, logits within 1e-4; bf16 (only on hardware
    that has it) is reduced precision: labels >= 95 % equal on random weights."""
    if backend == 'bf16' and not has_bf16(torch.device('cpu')):
        with pytest.raises(ValueError, match='bfloat16 hardware'):
            Predictor(copy.deepcopy(erfnet), device='cpu', backend=backend)
        return
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (32, 64, 3), dtype=np.uint8) for _ in range(2)]
    eager = Predictor(copy.deepcopy(erfnet), device='cpu', backend='eager')
    fast = Predictor(copy.deepcopy(erfnet), device='cpu', backend=backend)
    assert fast.backend == backend and eager.backend == 'eager'
    x = eager.prepare(frames)
    with torch.inference_mode():
        ref_logits = eager.model(x)
        fast_logits = fast.model(x.contiguous(memory_format=torch.channels_last))
    labels_eager, probs_eager = eager.infer(x, posteriors=True)
    labels_fast, probs_fast = fast.infer(x, posteriors=True)
    agreement = (labels_eager == labels_fast).float().mean().item()
    if backend == 'bf16':
        assert agreement >= 0.95
        return
    assert agreement >= 0.999
    torch.testing.assert_close(fast_logits, ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(probs_fast, probs_eager, atol=1e-5, rtol=1e-4)
    swapped = fast.with_weights(erfnet.state_dict())
    assert swapped.backend == backend  # A's weight swap keeps the backend


def test_auto_backend_is_timed_at_warmup_and_explicit_backends_are_kept(erfnet):
    auto = Predictor(copy.deepcopy(erfnet), device='cpu', input_size=(16, 32))
    assert auto.backend == 'channels_last'  # until timed
    auto.warmup((24, 40))
    allowed = {'eager', 'channels_last'} | ({'bf16'} if has_bf16(auto.device) else set())
    assert auto.backend in allowed
    fmt = torch.contiguous_format if auto.backend == 'eager' else torch.channels_last
    weight = next(p for p in auto.model.parameters() if p.dim() == 4)  # the first conv
    assert weight.is_contiguous(memory_format=fmt)
    assert auto.with_weights(erfnet.state_dict()).backend == auto.backend
    eager = Predictor(copy.deepcopy(erfnet), device='cpu', backend='eager')
    eager.warmup((16, 32))
    assert eager.backend == 'eager'
    with pytest.raises(ValueError, match='backend must be one of'):
        Predictor(copy.deepcopy(erfnet), device='cpu', backend='tensorrt')
