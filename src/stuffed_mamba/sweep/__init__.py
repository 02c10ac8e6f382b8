"""State-size sweeps (paper section 5): a grid of model sizes x training lengths, each cell a
normal `fit` run followed by the forgetting and passkey probes, one results row per cell.

    recipe, base = load_sweep("recipes/sweeps/forget_threshold_cpu.yaml")
    cells = expand(recipe, base)
    run_sweep(recipe, base, cells)          # or run_cell(...) for one Slurm array task
"""

from stuffed_mamba.sweep.recipe import Cell, SweepRecipe, expand, load_sweep
from stuffed_mamba.sweep.runner import results_path, run_cell, run_sweep

__all__ = ["Cell", "SweepRecipe", "expand", "load_sweep", "results_path", "run_cell", "run_sweep"]
