"""The numbers Bär et al. 2019 report (sec. 4), for side-by-side comparison with a run.

Ratios and mIoU values are in percent, as printed in the paper. Tables 1 and 2 give the mIoU
ratio adversarial / clean on Cityscapes mini validation (Lindau, 59 images) and mini test
(Frankfurt + Münster, 441 images); the clean mIoU values are from the text of sec. 4.2/4.3.
"""

from __future__ import annotations

from tsa_ros.experiments.tables import STANDARD_SETS

__all__ = ['CLEAN_MIOU', 'SWEEP_POINTS', 'TABLES']


def _row(*ratios: float) -> dict[str, float]:
    return dict(zip(STANDARD_SETS, ratios, strict=True))


#: Table number -> network -> set -> mIoU ratio in %.
TABLES: dict[int, dict[str, dict[str, float]]] = {
    1: {
        'T': _row(100.0, 37.98, 23.78, 99.31, 70.39),
        'S': _row(100.0, 97.24, 90.05, 25.60, 1.56),
        'A': _row(100.0, 95.80, 84.83, 39.77, 3.23),
    },
    2: {
        'T': _row(100.0, 35.74, 22.85, 99.05, 71.03),
        'S': _row(100.0, 97.03, 90.49, 23.97, 1.29),
        'A': _row(100.0, 96.08, 85.71, 35.14, 2.50),
        'A+IFM': _row(100.0, 96.57, 86.49, 80.51, 20.75),
    },
}

#: Table number -> network -> clean mIoU in % (sec. 4.2: mini val; sec. 4.3 "Final results").
CLEAN_MIOU: dict[int, dict[str, float]] = {
    1: {'T': 75.43, 'S': 66.06, 'A': 67.16},
    2: {'T': 75.77, 'S': 64.55, 'A': 66.82, 'A+IFM': 53.01},
}

#: Sweep points stated in the text of sec. 4.3 (mini val, β = 0.5): (α, γ, p) -> (clean mIoU %,
#: S-AE ε=1 ratio %). α = 0 is A of Table 1, (0.6, 1, 1) is F_A^best of Figs. 2 and 3; the
#: other points of the figures are only drawn, not printed.
SWEEP_POINTS: dict[tuple[float, float, float], tuple[float, float]] = {
    (0.0, 1.0, 1.0): (67.16, 39.77),
    (0.6, 1.0, 1.0): (54.10, 84.95),
    (0.6, 1.0, 2.0): (63.73, 47.45),
}
