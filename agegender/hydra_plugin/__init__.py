"""Hydra sweeper plugin: Optuna (see optuna_sweeper.py), installed as
``hydra_plugins.agegender_optuna``."""

from __future__ import annotations


def register() -> None:
    """Make the sweeper known to Hydra before a multirun starts.

    Hydra finds plugins by walking the ``hydra_plugins`` namespace with pkgutil, which does
    not see packages that an editable install (``pip install -e``, the README's) maps from
    another folder; Hydra's documented ``Plugins.instance().register`` does not need the walk.
    """
    from hydra.core.plugins import Plugins
    from hydra_plugins.agegender_optuna.optuna_sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)
