"""State-size analysis (paper section 5): N_S of a configuration, the T_forget and T_recall laws
fitted to sweep results, the paper's own fits as predictions, and plots.

Light to import (numpy only); scipy and matplotlib are imported where used.
"""

from stuffed_mamba.analysis.fits import (
    PAPER_T_FORGET,
    PAPER_T_RECALL,
    ExponentialLaw,
    LinearLaw,
    fit_exponential,
    fit_linear,
)
from stuffed_mamba.analysis.forget_warning import forget_threshold_warning, predicted_thresholds
from stuffed_mamba.analysis.state_size import OFFICIAL_SIZES, StateSize, resolve, state_size

__all__ = [
    "PAPER_T_FORGET",
    "PAPER_T_RECALL",
    "ExponentialLaw",
    "LinearLaw",
    "fit_exponential",
    "fit_linear",
    "forget_threshold_warning",
    "predicted_thresholds",
    "OFFICIAL_SIZES",
    "StateSize",
    "resolve",
    "state_size",
]
