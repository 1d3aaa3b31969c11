"""Everything a training run needs beyond the networks: the LightningModule that composes
them (``module``), optimiser parameter groups (the paper's per-layer learning-rate and decay
multipliers), metrics, confusion-matrix plots, metrics.json, pretrained-weight files, the
fine-tuning callback and one training run (``fit``: the function ``train.py`` calls).

Prediction never imports this package (it would pull in Lightning and Hydra for nothing).
"""
