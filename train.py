"""Fit and test one fold: ``python train.py [experiment=levi_hassner] [data.fold=0] ...``.

Thin Hydra entry; the run itself is :func:`agegender.training.fit.train`. Returns the
validation objective (``optimized_metric``) for sweeps.
"""

from __future__ import annotations

from agegender.errors import handled
from agegender.extras import exit_without_torch

# before Hydra and Lightning: without torch, one line naming the extra instead of a traceback
exit_without_torch("train.py", "training")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from agegender.training.fit import train

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        # a sweep's job: the error fails this job only, recorded with its traceback in the
        # cross-validation summary (a SystemExit would stop the whole sweep)
        return train(cfg)
    return handled("train", exits=True)(train)(cfg)  # e.g. a bad ckpt_path: one line, exit 2


if __name__ == "__main__":
    from hydra_plugins.agegender_optuna import register

    register()  # hparams_search=optuna: our sweeper, also from an editable install
    main()
