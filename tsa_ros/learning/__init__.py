"""Learning of the adaptive student A: the teacher-student losses of eqs. (3)-(6)."""

from tsa_ros.learning.losses import (
    TSLossConfig,
    TSLossTerms,
    fm_loss,
    ifm_loss,
    soft_cross_entropy,
    ts_loss,
    ts_objective,
)

__all__ = [
    'TSLossConfig',
    'TSLossTerms',
    'fm_loss',
    'ifm_loss',
    'soft_cross_entropy',
    'ts_loss',
    'ts_objective',
]
