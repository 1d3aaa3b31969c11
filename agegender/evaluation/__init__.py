"""Evaluation of a model on a labelled set: where it fails (``python -m agegender.evaluate``).

``sets`` reads the labelled sets (Adience tree, CSV), ``runner`` runs the model through
predict.py's engine, ``report`` computes every figure from per-face probabilities (no
network needed), ``outputs`` writes report.md, report.json, faces.csv and the figures.
docs/evaluation.md says what each figure means.
"""
