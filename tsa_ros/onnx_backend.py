"""The ``'onnxruntime'`` backend of :class:`~tsa_ros.inference.Predictor`: a network exported
once to ONNX and run by ONNX Runtime on the CPU.

* Export (``torch.onnx.export``, dynamo exporter) takes seconds, so each graph is cached on
  disk, keyed by the sha256 of the state_dict bytes, the architecture, the input size and the
  exporter's versions (:func:`cache_key`); a restart loads the file instead of exporting.
  The directory is ``$TSA_CACHE/onnx``, else ``~/.cache/tsa_ros/onnx``.
* The graph ends in the arg-max: labels (int64) come out of the session, and the logits only
  when posteriors are asked for (softmax in torch, as the other backends do).
* Hot swap (the adaptive student's new weights): every weight is saved as *external* data
  and handed to each session through ``SessionOptions.add_external_initializers``, which ORT
  applies before its graph optimisations; a swap is a new session from the same file, never
  an export. (``add_initializer`` is no substitute: ORT applies it after fusing Conv+BN, so
  fused layers would keep the file's weights.)
* The exporter's own optimiser is off: it folds BatchNorm into the convolutions, so the BN
  tensors would vanish from the graph and a swap could not reach them; ORT fuses them per
  session instead, from the swapped values.

onnxruntime, onnx and onnxscript are imported lazily: the package imports without them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tsa_ros.models import SegmentationNet

__all__ = [
    'CACHE_ENV',
    'REQUIRED_PACKAGES',
    'OrtNetwork',
    'cache_dir',
    'cache_key',
    'check_available',
    'export_onnx',
    'exported_graph',
]

CACHE_ENV = 'TSA_CACHE'
#: Import name -> pip name. onnx and onnxscript are the dynamo exporter's (it also needs
#: onnx_ir, which onnxscript depends on).
REQUIRED_PACKAGES = {'onnxruntime': 'onnxruntime', 'onnx': 'onnx', 'onnxscript': 'onnxscript'}
#: Bumped whenever the exported graph changes (outputs, names, layout of the cache entry).
FORMAT_VERSION = 1
GRAPH_FILE = 'model.onnx'
DATA_FILE = 'model.onnx.data'
NAMES_FILE = 'weights.json'
#: Prefix of every weight's name in the graph (the attribute of :class:`_LabelsAndLogits`).
PREFIX = 'model.'
#: Spinning intra-op threads burn the cores the other segmenters and the niced learner share.
ALLOW_SPINNING = False


def check_available() -> None:
    """Raise ``ValueError`` naming every package the backend needs but cannot import."""
    missing = [pip for name, pip in REQUIRED_PACKAGES.items() if not _importable(name)]
    if missing:
        raise ValueError(
            f'backend onnxruntime needs the Python package(s) {", ".join(missing)}: '
            f'pip install {" ".join(missing)} (pinned in requirements.txt)'
        )


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def cache_dir() -> Path:
    """Where exported graphs are kept: ``$TSA_CACHE/onnx`` or ``~/.cache/tsa_ros/onnx``."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / '.cache' / 'tsa_ros') / 'onnx'


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return 'none'


def cache_key(model: SegmentationNet, size: tuple[int, int]) -> str:
    """sha256 over the weights (names, dtypes, shapes, bytes), the architecture, the input
    size and the versions of torch and onnxscript (a new exporter may write another graph)."""
    config = model.config
    digest = hashlib.sha256()
    header = {
        'format': FORMAT_VERSION,
        'arch': [config.arch, config.num_classes, config.backbone, config.output_stride],
        'size': list(size),
        'torch': torch.__version__,
        'onnxscript': _version('onnxscript'),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu()
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}'.encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class _LabelsAndLogits(nn.Module):
    """What the graph computes: arg-max labels (int64) and the logits they come from."""

    def __init__(self, model: SegmentationNet) -> None:
        super().__init__()
        self.model = model  # weights are named PREFIX + state_dict key in the graph

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(images)
        return logits.argmax(dim=1), logits


def _swappable(model: SegmentationNet) -> list[str]:
    """The state_dict keys a session must receive: every floating tensor (BN's
    ``num_batches_tracked`` plays no part in an eval forward)."""
    return [k for k, v in model.state_dict().items() if v.is_floating_point()]


def export_onnx(model: SegmentationNet, size: tuple[int, int], folder: Path) -> None:
    """Export ``model`` at input ``(1..N, 3, *size)`` into ``folder`` (graph, external
    weights, and the list of weight names). Slow: seconds; use :func:`exported_graph`."""
    check_available()
    import onnx_ir

    folder.mkdir(parents=True, exist_ok=True)
    wrapper = _LabelsAndLogits(model).eval()  # a fresh module is in training mode
    device = next(model.parameters()).device
    example = torch.zeros((1, 3, *size), device=device)
    program = torch.onnx.export(
        wrapper,
        (example,),
        dynamo=True,
        input_names=['images'],
        output_names=['labels', 'logits'],
        dynamic_shapes=({0: torch.export.Dim('batch', min=1, max=1024)},),
        optimize=False,  # its BN folding would hide the BN tensors from a swap
        verbose=False,
    )
    initializers = set(program.model.graph.initializers)
    names = _swappable(model)
    missing = [n for n in names if PREFIX + n not in initializers]
    if missing:
        raise RuntimeError(
            f'the exported graph lacks {len(missing)} weight(s) (e.g. {missing[:3]}): '
            'a weight swap could not reach them'
        )
    # Every tensor external (threshold 0): ORT replaces only external initializers.
    onnx_ir.save(
        program.model, folder / GRAPH_FILE, external_data=DATA_FILE, size_threshold_bytes=0
    )
    (folder / NAMES_FILE).write_text(json.dumps(names), encoding='utf-8')


def exported_graph(
    model: SegmentationNet, size: tuple[int, int], root: Path | None = None
) -> Path:
    """The cached export of ``model`` at ``size`` (exported now when missing); returns the
    folder. Written to a temporary folder and renamed, so concurrent processes (T, S and A
    start together) never see half a file; the first rename wins."""
    root = cache_dir() if root is None else Path(root)
    folder = root / cache_key(model, size)
    if (folder / NAMES_FILE).exists():  # written last: its presence means complete
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name[:16]}-', dir=root))
    try:
        export_onnx(model, size, tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process was first, or a stale incomplete entry
            if not (folder / NAMES_FILE).exists():
                shutil.rmtree(folder, ignore_errors=True)
                tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


class _Session:
    """One ORT session plus the weight arrays it was given (they must outlive it)."""

    def __init__(self, folder: Path, model: SegmentationNet, num_threads: int) -> None:
        import onnxruntime as ort

        names = json.loads((folder / NAMES_FILE).read_text(encoding='utf-8'))
        state = model.state_dict()
        # Copies: the session must not change when the caller trains its model in place.
        self._arrays = [np.array(state[n].detach().cpu().numpy(), copy=True) for n in names]
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self._arrays]
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry(
            'session.intra_op.allow_spinning', '1' if ALLOW_SPINNING else '0'
        )
        options.add_external_initializers([PREFIX + n for n in names], values)
        self._values = values
        self.session = ort.InferenceSession(
            str(folder / GRAPH_FILE), options, providers=['CPUExecutionProvider']
        )


class OrtNetwork:
    """One :class:`SegmentationNet` run by ONNX Runtime at fixed input sizes.

    The session for a size is built on first use (export or cache hit); a new size builds a
    new one (re-exporting only when that size was never exported). ``run`` is thread-safe.

    Args:
        model: the network whose weights every session gets (copied at session creation).
        num_threads: ORT intra-op threads; ``None`` = torch's current setting, so the
            backends compare at equal threads.
        root: cache folder (``None``: :func:`cache_dir`).
    """

    def __init__(
        self,
        model: SegmentationNet,
        *,
        num_threads: int | None = None,
        root: Path | None = None,
        _graphs: dict[tuple[int, int], Path] | None = None,
    ) -> None:
        check_available()
        self.model = model
        self.num_threads = num_threads or torch.get_num_threads()
        self.root = root
        # Graph folders by size, shared by every swap of one network: any weights fit them.
        self._graphs = {} if _graphs is None else _graphs
        self._lock = threading.Lock()
        self._size: tuple[int, int] | None = None
        self._session: _Session | None = None

    @property
    def size(self) -> tuple[int, int] | None:
        """The input size of the current session (``None`` before the first)."""
        return self._size

    def session(self, size: tuple[int, int]):
        """The ``onnxruntime.InferenceSession`` for input ``size`` (built when needed)."""
        size = (int(size[0]), int(size[1]))
        with self._lock:
            if self._size != size or self._session is None:
                folder = self._graphs.get(size)
                if folder is None:
                    folder = self._graphs[size] = exported_graph(self.model, size, self.root)
                self._session = _Session(folder, self.model, self.num_threads)
                self._size = size
            return self._session.session

    def with_model(self, model: SegmentationNet) -> OrtNetwork:
        """The same graphs with ``model``'s weights; the session for the current size is
        built now (tens of ms), so the first frame after a swap pays nothing extra."""
        other = OrtNetwork(
            model, num_threads=self.num_threads, root=self.root, _graphs=self._graphs
        )
        if self._size is not None:
            other.session(self._size)
        return other

    def _run(self, images: Tensor, outputs: list[str]) -> list[np.ndarray]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f'expected images (N, 3, H, W), got {tuple(images.shape)}')
        x = images.detach().to('cpu', torch.float32).contiguous().numpy()
        return self.session(tuple(images.shape[-2:])).run(outputs, {'images': x})

    def logits(self, images: Tensor) -> Tensor:
        """Logits ``(N, C, h, w)`` float32 for gray-value images ``(N, 3, h, w)``."""
        return torch.from_numpy(self._run(images, ['logits'])[0])

    def infer(self, images: Tensor, posteriors: bool = False) -> tuple[Tensor, Tensor | None]:
        """Labels ``(N, h, w)`` int64 and, with ``posteriors``, softmax ``(N, C, h, w)``."""
        if not posteriors:
            return torch.from_numpy(self._run(images, ['labels'])[0]), None
        labels, logits = self._run(images, ['labels', 'logits'])
        return torch.from_numpy(labels), torch.softmax(torch.from_numpy(logits), dim=1)
