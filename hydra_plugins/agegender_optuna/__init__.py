"""Hydra sweeper plugin: Optuna (see optuna_sweeper.py)."""
