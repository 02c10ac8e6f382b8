"""Training: recipes (config), the TBPTT LightningModule (module), the WSD schedule (schedule),
checkpoints and Slurm requeue, and `fit` (recipe -> trained model). See docs/training.md.

Kept light to import: Lightning and the model are imported by the submodules that need them.
"""
