"""The Mamba-2 language model (knows nothing of Lightning)."""

from stuffed_mamba.model.config import Mamba2Config
from stuffed_mamba.model.intervention import Intervention
from stuffed_mamba.model.lm import LMOutput, Mamba2LM
from stuffed_mamba.model.state import LayerState, ModelState, WindowState

__all__ = ["Mamba2Config", "Mamba2LM", "ModelState", "LayerState", "WindowState", "Intervention", "LMOutput"]
