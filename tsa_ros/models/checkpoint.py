"""Checkpoints and deterministic weight serialisation for :class:`SegmentationNet`.

A checkpoint is a ``torch.save`` dict of plain types only (so it loads with
``weights_only=True``)::

    {'format_version': 1, 'config': ModelConfig.to_dict(), 'state_dict': {name: cpu tensor},
     'sha256': weights_sha256(state_dict), 'extra': {...}}

:func:`state_dict_to_bytes` is a small self-describing binary format (not ``torch.save``,
whose archives are not byte-for-byte reproducible): the same weights always give the same
bytes and hence the same hash. It is also what weight snapshots are shipped as.

Layout: ``MAGIC`` | uint64 little-endian header length | UTF-8 JSON header | raw tensor data.
The header is ``{'version': 1, 'tensors': [[name, dtype, shape, nbytes], ...]}``; tensors are
stored contiguously, in state-dict order, in native little-endian byte order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tsa_ros.models.wrapper import ModelConfig, SegmentationNet, build_model

__all__ = [
    'FORMAT_VERSION',
    'CheckpointError',
    'save_checkpoint',
    'load_checkpoint',
    'state_dict_to_bytes',
    'state_dict_from_bytes',
    'weights_sha256',
]

FORMAT_VERSION = 1
MAGIC = b'TSA-SD\x00\x01'
_REQUIRED_KEYS = ('format_version', 'config', 'state_dict', 'sha256', 'extra')

_DTYPES: dict[str, torch.dtype] = {
    str(dt).removeprefix('torch.'): dt
    for dt in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


class CheckpointError(ValueError):
    """A checkpoint or weight blob is missing, unreadable, corrupted or does not match."""


# ------------------------------------------------------------------------- serialisation
def state_dict_to_bytes(state_dict: Mapping[str, Tensor]) -> bytes:
    """Serialise a state dict deterministically (same names, dtypes and values -> same bytes).

    Tensors on any device are copied to the CPU; key order is preserved.
    """
    if sys.byteorder != 'little':  # pragma: no cover - all supported targets are little-endian
        raise RuntimeError('state_dict_to_bytes assumes a little-endian machine')
    entries: list[list[Any]] = []
    chunks: list[bytes] = []
    for name, tensor in state_dict.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f'state dict entry {name!r} is not a tensor: {type(tensor).__name__}')
        dtype = str(tensor.dtype).removeprefix('torch.')
        if dtype not in _DTYPES:
            raise TypeError(f'state dict entry {name!r} has unsupported dtype {tensor.dtype}')
        flat = tensor.detach().to('cpu').contiguous().reshape(-1)
        data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b''
        entries.append([name, dtype, list(tensor.shape), len(data)])
        chunks.append(data)
    header = json.dumps(
        {'version': 1, 'tensors': entries}, separators=(',', ':'), sort_keys=True
    ).encode('utf-8')
    return b''.join([MAGIC, struct.pack('<Q', len(header)), header, *chunks])


def _blob_entry(entry: Any) -> tuple[str, torch.dtype, tuple[int, ...], int]:
    """One checked ``[name, dtype, shape, nbytes]`` entry of a weight blob header."""
    try:
        name, dtype_name, shape, nbytes = entry
    except (TypeError, ValueError):
        raise CheckpointError(f'weight blob entry {entry!r:.60} is malformed') from None
    if not isinstance(name, str) or not isinstance(dtype_name, str):
        raise CheckpointError(f'weight blob entry {entry!r:.60} is malformed')
    if dtype_name not in _DTYPES:
        raise CheckpointError(f'weight blob entry {name!r} has unknown dtype {dtype_name!r}')
    dtype = _DTYPES[dtype_name]
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise CheckpointError(f'weight blob entry {name!r} has a malformed shape')
    elements = math.prod(shape)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if type(nbytes) is not int or nbytes != elements * itemsize:
        raise CheckpointError(
            f'weight blob entry {name!r} is inconsistent: {nbytes!r} bytes for shape {shape}'
        )
    return name, dtype, tuple(shape), nbytes


def state_dict_from_bytes(blob: bytes | bytearray | memoryview) -> OrderedDict[str, Tensor]:
    """Inverse of :func:`state_dict_to_bytes`; returns CPU tensors that own their memory.

    Raises:
        CheckpointError: if ``blob`` is not a well-formed weight blob.
    """
    blob = bytes(blob)
    prefix = len(MAGIC) + 8
    if len(blob) < prefix or not blob.startswith(MAGIC):
        raise CheckpointError('not a tsa_ros weight blob (bad magic bytes)')
    (header_len,) = struct.unpack('<Q', blob[len(MAGIC) : prefix])
    try:
        header = json.loads(blob[prefix : prefix + header_len].decode('utf-8'))
        entries = header['tensors']
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f'corrupted tsa_ros weight blob header: {exc}') from None
    offset = prefix + header_len
    out: OrderedDict[str, Tensor] = OrderedDict()
    if not isinstance(entries, list):
        raise CheckpointError('corrupted tsa_ros weight blob header: tensors is not a list')
    for entry in entries:
        name, dtype, shape, nbytes = _blob_entry(entry)
        if offset + nbytes > len(blob):
            raise CheckpointError(f'weight blob is truncated (entry {name!r})')
        raw = bytearray(blob[offset : offset + nbytes])  # writable copy owned by the tensor
        offset += nbytes
        if nbytes:
            flat = torch.frombuffer(raw, dtype=torch.uint8).view(dtype)
        else:
            flat = torch.empty(0, dtype=dtype)
        out[name] = flat.reshape(shape)
    if offset != len(blob):
        raise CheckpointError(f'weight blob has {len(blob) - offset} trailing bytes')
    return out


def weights_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """Hex SHA-256 of :func:`state_dict_to_bytes` of ``state_dict``."""
    return hashlib.sha256(state_dict_to_bytes(state_dict)).hexdigest()


# ---------------------------------------------------------------------------- checkpoints
_PLAIN_SCALARS = (type(None), bool, int, float, str, bytes, Tensor)


def _check_plain(value: Any, where: str) -> None:
    """Fail early on objects that ``torch.load(weights_only=True)`` would refuse later."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f'{where}: dict key {k!r} must be a str or int')
            _check_plain(v, f'{where}[{k!r}]')
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f'{where}[{i}]')
    elif not isinstance(value, _PLAIN_SCALARS):
        raise TypeError(
            f'{where} has type {type(value).__name__}; checkpoint extras must be plain types '
            '(None, bool, int, float, str, bytes, tensors, lists, tuples, dicts)'
        )


def save_checkpoint(
    path: str | os.PathLike[str],
    model: SegmentationNet,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Atomically write ``model`` (config + weights + hash) and ``extra`` to ``path``.

    ``extra`` should hold plain types only (numbers, strings, lists, dicts, tensors) so the
    file stays loadable with ``weights_only=True``. The file appears complete or not at all:
    it is written to a temporary file in the same directory and then ``os.replace``-d.
    Returns the path written.
    """
    if not isinstance(model, SegmentationNet):
        raise TypeError(f'model must be a SegmentationNet, got {type(model).__name__}')
    extra = dict(extra) if extra is not None else {}
    _check_plain(extra, 'extra')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = OrderedDict(
        (k, v.detach().to('cpu').clone()) for k, v in model.state_dict().items()
    )
    payload = {
        'format_version': FORMAT_VERSION,
        'config': model.config.to_dict(),
        'state_dict': state_dict,
        'sha256': weights_sha256(state_dict),
        'extra': extra,
    }
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _check_expected(stored: ModelConfig, expected: ModelConfig, path: Path) -> None:
    fields = ['arch', 'num_classes', 'input_size']
    if expected.arch == 'deeplabv3plus' and stored.arch == 'deeplabv3plus':
        fields += ['backbone', 'output_stride']
    for name in fields:
        got, want = getattr(stored, name), getattr(expected, name)
        if got != want:
            raise CheckpointError(
                f'checkpoint {path} does not match the expected model: {name} is {got!r} in '
                f'the file but {want!r} was expected'
            )


def load_checkpoint(
    path: str | os.PathLike[str],
    expected: ModelConfig | None = None,
    map_location: str | torch.device = 'cpu',
) -> tuple[SegmentationNet, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: checkpoint file.
        expected: if given, the stored arch, num_classes and input_size (and backbone and
            output_stride for DeepLabV3+) must equal its values. Its ``feature_layers`` are
            applied to the returned model (taps are not weights).
        map_location: device the returned model is moved to.

    Returns:
        ``(model, meta)`` with the model in eval mode on ``map_location`` and ``meta`` holding
        ``path``, ``format_version``, ``config`` (ModelConfig), ``sha256`` and ``extra``.

    Raises:
        CheckpointError: file missing, unreadable / not a tsa_ros checkpoint, weights not
            matching their stored SHA-256 (corrupted), or mismatch with ``expected``.
    """
    if expected is not None and not isinstance(expected, ModelConfig):
        raise TypeError(f'expected must be a ModelConfig or None, got {type(expected).__name__}')
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint file not found: {path}')
    try:
        payload = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f'cannot read checkpoint {path} (corrupted or not a tsa_ros checkpoint): '
            f'{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""}'
        ) from None
    if not isinstance(payload, dict) or any(k not in payload for k in _REQUIRED_KEYS):
        raise CheckpointError(
            f'{path} is not a tsa_ros checkpoint (expected a dict with keys {_REQUIRED_KEYS})'
        )
    if payload['format_version'] != FORMAT_VERSION:
        raise CheckpointError(
            f'checkpoint {path} has format_version {payload["format_version"]!r}; this code '
            f'reads version {FORMAT_VERSION}'
        )
    try:
        config = ModelConfig.from_dict(payload['config'])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f'checkpoint {path} has an invalid config: {exc}') from None
    state_dict = payload['state_dict']
    try:
        digest = weights_sha256(state_dict)
    except (TypeError, AttributeError) as exc:
        raise CheckpointError(f'checkpoint {path} has an invalid state_dict: {exc}') from None
    if digest != payload['sha256']:
        raise CheckpointError(
            f'checkpoint {path} is corrupted: sha256 of the weights is {digest}, '
            f'the file records {payload["sha256"]}'
        )
    if expected is not None:
        _check_expected(config, expected, path)
        config = ModelConfig.from_dict(
            {**config.to_dict(), 'feature_layers': expected.feature_layers}
        )
    model = build_model(config)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f'checkpoint {path} does not fit its own config: {exc}') from None
    model.to(map_location).eval()
    meta = {
        'path': str(path),
        'format_version': payload['format_version'],
        'config': config,
        'sha256': digest,
        'extra': payload['extra'],
    }
    return model, meta
