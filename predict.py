"""Predict age and gender for every face in an image, a folder or a video.

    python predict.py input=data/samples output=/tmp/out

Writes ``output``/predictions.csv (docs/contracts.md lists the columns) and annotated copies.
Exit code 0 even when some inputs are bad (they get ``error: ...`` rows); non-zero only for
a bad configuration, a missing input, missing weights or a CSV ``resume=true`` cannot
continue. ``-m shard=0,1,2,3 num_shards=4`` predicts in 4 jobs and merges their CSVs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from agegender.errors import handled

    # FileNotFoundError: a file named in the settings (a checkpoint, a label set) is missing
    handled("predict", exits=True, builtin=(FileNotFoundError,), on_error=_leave_no_folder(cfg))(
        _predict
    )(cfg)


def _predict(cfg: DictConfig) -> None:
    from agegender.predict_command import predict_from_config

    predict_from_config(OmegaConf.to_container(cfg, resolve=True))


def _leave_no_folder(cfg: DictConfig) -> Callable[[Exception], None]:
    """What runs before the error line: a run refused before anything was predicted (a
    missing input, a bad setting) leaves no output folder behind."""

    def remove(error: Exception) -> None:
        from agegender.errors import SettingError
        from agegender.inference.inputs import InputNotFoundError
        from agegender.inference.options import OptionError
        from agegender.predict_command import remove_hydra_only_output

        if isinstance(error, InputNotFoundError | OptionError | SettingError):
            remove_hydra_only_output(cfg.output)

    return remove


def _exit_now(code: int) -> None:
    """Leave without the interpreter's teardown: with this CUDA build of torch it takes
    ~0.5-0.9 s and raises peak memory by ~130 MB (measured: ``import torch`` alone peaks at
    519 MB with ``os._exit``, 647 MB with a normal exit). Every output file is closed by
    then; the streams and logs are flushed here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    if {"-m", "--multirun"} & set(sys.argv[1:]):
        main()  # launchers (joblib, submitit) clean up their workers at interpreter exit
        sys.exit(0)
    try:
        main()
    except SystemExit as stop:  # Hydra's and ours (exit code 2 for bad input paths)
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if stop.code is not None and not isinstance(stop.code, int):
            print(stop.code, file=sys.stderr)
        _exit_now(code)
    _exit_now(0)
