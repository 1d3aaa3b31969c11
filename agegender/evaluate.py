"""``python -m agegender.evaluate``: any model on any labelled set, a report of where it fails.

    python -m agegender.evaluate set=adience root=data/adience fold=0 output=/tmp/eval
    python -m agegender.evaluate set=csv csv=labels.csv output=/tmp/eval groups=[source] \
        labels=coarse3 checkpoint=run.ckpt calibrate=true

Writes report.md, report.json, faces.csv and the figures into ``output`` (docs/evaluation.md
says what each figure means), prints the headline table and a summary line, and lists on
stderr every row left out (skipped, duplicate, unreadable image) by its file and line, so a
user can fix the set without opening report.json. Exit code 2 with one line for a bad setting
or a set that cannot be read; unreadable images are counted in the report, never fatal.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from agegender.errors import handled


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # deferred: the engine imports onnxruntime/OpenCV; Hydra's --help should not wait for them
    from agegender.evaluation.outputs import headline_text, problem_lines, summary_line
    from agegender.evaluation.runner import evaluate

    output = Path(str(cfg.output))
    # ValueError, FileNotFoundError: raise sites in the engine not yet an AgeGenderError
    run = handled(
        "evaluate",
        exits=True,
        builtin=(FileNotFoundError, ValueError),
        on_error=lambda _: _remove_if_empty(output),
    )(evaluate)
    evaluation = run(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    report = evaluation.report
    print(headline_text(report))
    print(summary_line(report, str(cfg.output)), flush=True)
    for line in problem_lines(report["dataset"]):
        print(f"  {line}", file=sys.stderr)


def _remove_if_empty(folder: Path) -> None:
    """A run that stopped before writing anything leaves no folder (Hydra creates it first)."""
    with contextlib.suppress(OSError):
        folder.rmdir()  # only ever removes an empty folder


if __name__ == "__main__":
    main()
