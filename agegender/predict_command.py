"""What ``predict.py`` runs: the options from the composed config, the API object, the
source, the job loop, and the closing lines on the console."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from agegender.api import AgeGender
from agegender.errors import SettingError, report
from agegender.inference.job import run_job
from agegender.inference.options import PredictOptions
from agegender.inference.sources import SKIPPED_NAME, open_source
from agegender.inference.summary import Summary
from agegender.inference.video import tracks_path, video_line
from agegender.runtime.build import configure_torch_threads

#: What Hydra writes into ``output`` before predict.py's code runs (its run directory).
HYDRA_FILES = frozenset({".hydra", "predict.log"})


class OutputCheck(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/predict.yaml): ``output=`` naming an existing
    file is one line and exit code 2, before Hydra tries to make it a folder (a
    FileExistsError traceback otherwise)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        check_output(config.output)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        check_output(config.output)


def check_output(output: str | Path) -> None:
    """Exit 2 with one line when ``output`` exists and is not a folder."""
    path = Path(output)
    if path.exists() and not path.is_dir():
        error = SettingError(
            f"output={output} is a file, not a folder: give a folder for "
            "predictions.csv and the annotated images (it is made when missing)"
        )
        sys.exit(report("predict", error))  # a Hydra callback: before predict.py's handler


def scrub_hydra_files(output: str | Path, secret: str, shown: str) -> int:
    """Replace ``secret`` (an input URL with a password) by ``shown`` (it redacted) in the
    files Hydra wrote before the run started (``.hydra/*.yaml``, ``*.log``); returns how many
    files changed. Hydra records the command line as given; the run's own files never
    receive the secret."""
    changed = 0
    folder = Path(output)
    for path in [*folder.glob(".hydra/*.yaml"), *folder.glob("*.log")]:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if secret in text:
            path.write_text(text.replace(secret, shown), encoding="utf-8")
            changed += 1
    return changed


def remove_hydra_only_output(output: str | Path) -> bool:
    """Remove ``output`` when it holds only what Hydra put there for this run (a run that
    stopped before its first file, e.g. a missing input, leaves no folder behind)."""
    folder = Path(output)
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return False
    if not names or not names <= HYDRA_FILES:
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def predict_from_config(cfg: Mapping[str, Any]) -> Summary:
    """Predict ``cfg["input"]`` into ``cfg["output"]`` as ``conf/predict.yaml`` says."""
    options = PredictOptions.from_config(cfg).replace(download=True)
    output = Path(str(options.output))
    # The source first: a missing input or a setting it refuses fails before any model loads.
    source = open_source(str(options.input), output, options)
    if source.name != str(options.input):  # a stream URL with a password: not kept on disk
        scrub_hydra_files(output, str(options.input), source.name)
    source.check()
    agegender = AgeGender(options=options)
    classifier = agegender.classifier
    if classifier.backend == "torch":
        # `threads` reaches onnxruntime in the classifier (null: one thread per core, which
        # measured faster end to end on 2 cores); PyTorch's process-wide count is set here.
        configure_torch_threads(options.threads, options.workers)
    summary = run_job(source, output, agegender.detector, classifier, options)
    for repair in summary.repairs:
        print(f"  resume: {repair}", file=sys.stderr)
    target = summary.csv or f"{output} (privacy: audience aggregates only)"
    print(
        f"predict: {summary.line()} -> {target} "
        f"(precision {classifier.precision}, {classifier.backend}: {classifier.backend_reason})"
    )
    if classifier.backend_reason.startswith("auto took"):  # the install step was skipped
        print(f"  backend: {classifier.backend_reason}", file=sys.stderr)
    if summary.videos and summary.csv:  # videos and streams (privacy: no tracks.csv)
        print(f"  {video_line(summary)} -> {tracks_path(Path(summary.csv))}")
    for example in summary.error_examples:
        print(f"  error: {example}", file=sys.stderr)
    for path in summary.skipped[:5]:
        print(f"  skipped (not an image/video file, or hidden): {path}", file=sys.stderr)
    if summary.skipped:
        print(f"  all {len(summary.skipped)} skipped: {output / SKIPPED_NAME}", file=sys.stderr)
    return summary
