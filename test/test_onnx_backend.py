"""backend='onnxruntime': the exported graph against eager torch, the weight swap without an
export, the on-disk cache, and the errors (one export per size; about 25 s in all)."""

import copy
import sys

import numpy as np
import pytest
import torch

from tsa_ros import onnx_backend
from tsa_ros.inference import BACKENDS, Predictor, resolve_backend
from tsa_ros.models import ModelConfig, build_model

SIZE = (32, 64)


def _erfnet(seed):
    """ERFNet with random BatchNorm statistics too: with the defaults (mean 0, var 1) a swap
    that kept the file's BN values (the trap of ORT's add_initializer) would go unseen."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch='erfnet', num_classes=5, input_size=SIZE)).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    """A cache folder of this module's own (TSA_CACHE), never the user's."""
    root = tmp_path_factory.mktemp('tsa_cache')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(onnx_backend.CACHE_ENV, str(root))
        yield root / 'onnx'


@pytest.fixture
def exports(monkeypatch):
    """Counts the real exports (the slow step) made while a test runs."""
    calls = []
    real = onnx_backend.export_onnx

    def counting(model, size, folder):
        calls.append(tuple(size))
        return real(model, size, folder)

    monkeypatch.setattr(onnx_backend, 'export_onnx', counting)
    return calls


@pytest.fixture(scope='module')
def erfnet():
    return _erfnet(0)


@pytest.fixture(scope='module')
def ort_predictor(erfnet, cache):
    predictor = Predictor(
        copy.deepcopy(erfnet), device='cpu', input_size=SIZE, backend='onnxruntime'
    )
    predictor.warmup(SIZE)  # exports (or loads) the graph
    return predictor


def _images(n=2, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, 3, *SIZE)).astype(np.float32))


def test_onnxruntime_agrees_with_eager(erfnet, ort_predictor):
    eager = Predictor(copy.deepcopy(erfnet), device='cpu', input_size=SIZE, backend='eager')
    x = _images()
    labels, probs = ort_predictor.infer(x, posteriors=True)
    labels_eager, probs_eager = eager.infer(x, posteriors=True)
    assert labels.dtype == torch.int64 and labels.shape == (2, *SIZE)
    assert probs.dtype == torch.float32 and probs.shape == (2, 5, *SIZE)
    assert (labels == labels_eager).float().mean().item() >= 0.999
    torch.testing.assert_close(probs, probs_eager, atol=1e-4, rtol=1e-4)
    with torch.inference_mode():
        ref_logits = eager.model(x)
    torch.testing.assert_close(ort_predictor._ort.logits(x), ref_logits, atol=1e-4, rtol=1e-4)
    only_labels, none = ort_predictor.infer(x)
    assert none is None and torch.equal(only_labels, labels)
    # The whole frame path too, at another frame size (resized in, labels back by nearest).
    frames = list(np.random.default_rng(1).integers(0, 256, (2, 40, 72, 3), dtype=np.uint8))
    for ours, theirs in zip(
        ort_predictor.predict_batch(frames, 0.5), eager.predict_batch(frames, 0.5), strict=True
    ):
        assert ours.labels.shape == (40, 72)
        assert (ours.labels == theirs.labels).mean() >= 0.999
        np.testing.assert_allclose(ours.posteriors, theirs.posteriors, atol=1e-4)


def test_with_weights_swaps_without_an_export(ort_predictor, exports):
    other = _erfnet(1)
    x = _images(seed=2)
    before, _ = ort_predictor.infer(x)
    swapped = ort_predictor.with_weights(other.state_dict())
    assert exports == []  # the graph is reused, only a session is built
    assert swapped.backend == 'onnxruntime' and swapped.model is not ort_predictor.model
    eager = Predictor(copy.deepcopy(other), device='cpu', input_size=SIZE, backend='eager')
    labels, probs = swapped.infer(x, posteriors=True)
    labels_eager, probs_eager = eager.infer(x, posteriors=True)
    assert (labels == labels_eager).float().mean().item() >= 0.999
    torch.testing.assert_close(probs, probs_eager, atol=1e-4, rtol=1e-4)
    assert not torch.equal(labels, before)
    assert torch.equal(ort_predictor.infer(x)[0], before)  # the old one keeps serving
    with pytest.raises(ValueError, match='do not fit'):
        ort_predictor.with_weights({'nonsense': torch.zeros(1)})


def test_the_export_is_cached_on_disk(erfnet, ort_predictor, cache, exports):
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith('.')]
    assert entry.name == onnx_backend.cache_key(erfnet, SIZE)
    graph = entry / onnx_backend.GRAPH_FILE
    mtime = graph.stat().st_mtime_ns
    again = Predictor(copy.deepcopy(erfnet), device='cpu', input_size=SIZE, backend='onnxruntime')
    x = _images(seed=3)
    torch.testing.assert_close(again.infer(x)[0], ort_predictor.infer(x)[0])
    assert exports == [] and graph.stat().st_mtime_ns == mtime  # a restart loads the file
    # No input size: the first size seen is exported, a new size once more, a known one not.
    free = Predictor(copy.deepcopy(erfnet), device='cpu', backend='onnxruntime')
    free.infer(x)
    assert exports == []  # 32x64: the same weights and size as above
    wider = torch.zeros(1, 3, 32, 80)
    assert free.infer(wider)[0].shape == (1, 32, 80)
    free.infer(x)
    free.infer(wider)
    assert exports == [(32, 80)]
    assert onnx_backend.cache_key(_erfnet(1), SIZE) != entry.name  # keyed by the weights


def test_backend_errors_are_one_clear_value_error(erfnet, monkeypatch):
    assert 'onnxruntime' in BACKENDS
    with pytest.raises(ValueError, match='backend must be one of .*onnxruntime'):
        Predictor(copy.deepcopy(erfnet), device='cpu', backend='onnx-runtime')
    with pytest.raises(ValueError, match='CPU only'):
        resolve_backend('onnxruntime', torch.device('cuda'))
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # as if not installed
    with pytest.raises(ValueError, match='needs the Python package.*onnxruntime'):
        Predictor(copy.deepcopy(erfnet), device='cpu', backend='onnxruntime')
