"""Segmentation networks of the teacher / student / adaptive-student framework.

* :func:`build_model` / :class:`SegmentationNet`: one interface for ERFNet (Romera et al. 2018,
  the students S and A) and DeepLabV3+ (Chen et al. 2018, the teacher T, ResNet backbone of
  He et al. 2016). Inputs are gray values in ``[0, 255]``; normalisation happens inside.
* :func:`save_checkpoint` / :func:`load_checkpoint`: atomic, hash-checked checkpoints.
* :func:`state_dict_to_bytes` / :func:`state_dict_from_bytes` / :func:`weights_sha256`:
  deterministic weight serialisation (weight snapshots).
* :func:`count_parameters` / :func:`count_conv_macs`: complexity figures.
"""

from tsa_ros.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    state_dict_from_bytes,
    state_dict_to_bytes,
    weights_sha256,
)
from tsa_ros.models.complexity import count_conv_macs, count_parameters
from tsa_ros.models.wrapper import ModelConfig, SegmentationNet, build_model

__all__ = [
    'ModelConfig',
    'SegmentationNet',
    'build_model',
    'save_checkpoint',
    'load_checkpoint',
    'CheckpointError',
    'state_dict_to_bytes',
    'state_dict_from_bytes',
    'weights_sha256',
    'count_conv_macs',
    'count_parameters',
]
