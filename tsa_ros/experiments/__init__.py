"""Offline experiments of the paper (sec. 4.1-4.3): adversarial example sets and tables.

* :func:`make_ae_set` (``tsa attack``): a self-contained Cityscapes-layout root holding the
  least-likely-attack AEs of one split against one static network (or the clean set at the
  same size, ``epsilon = 0``).
* :func:`evaluate` / :func:`ratio_table` (``tsa eval``): mIoU of every network on every set
  and the paper's robustness tables (Tables 1 and 2).
"""

from tsa_ros.experiments.ae_sets import AE_MANIFEST_KEY, make_ae_set
from tsa_ros.experiments.tables import (
    FUSION_ROWS,
    STANDARD_SETS,
    evaluate,
    ratio_table,
    write_results,
)

__all__ = [
    'AE_MANIFEST_KEY',
    'FUSION_ROWS',
    'STANDARD_SETS',
    'evaluate',
    'make_ae_set',
    'ratio_table',
    'write_results',
]
