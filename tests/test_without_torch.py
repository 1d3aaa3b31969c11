"""Where torch is not installed: every command that needs it says so in one line naming the
extra to install (exit 2, no traceback), and exporting the original nets to ONNX still works
(built from the caffemodels, the same graph as the torch export's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agegender.extras import TRAIN_EXTRA
from agegender.store import original_onnx_path
from tests.conftest import WEIGHTS_HINT, require

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def poison(tmp_path: Path) -> Path:
    """A folder whose ``torch`` package fails to import, for the front of PYTHONPATH."""
    folder = tmp_path / "poison"
    (folder / "torch").mkdir(parents=True)
    (folder / "torch" / "__init__.py").write_text('raise ImportError("no torch here")\n')
    return folder


def _run(args: list[str], poison: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(poison), "PATH": "", "HOME": str(Path.home())}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env
    )


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["train.py", "data.fold=0"], "train.py: training needs PyTorch"),
        (["-m", "agegender.export", "output=m.pt"], "export: format=torchscript needs PyTorch"),
        (
            ["-m", "agegender.export", "checkpoint=last.ckpt", "output=m.onnx"],
            "export: exporting checkpoint=last.ckpt needs PyTorch",
        ),
        (["-m", "agegender.weights", "measure"], "measure: measuring the runtimes needs PyTorch"),
    ],
)
def test_commands_that_need_torch_say_so_in_one_line(args, what, poison, tmp_path) -> None:
    run = _run(args, poison)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == f"{what}, which is not installed: {TRAIN_EXTRA}"
    assert not (REPO / "m.pt").exists() and not (REPO / "m.onnx").exists()


def test_export_of_the_original_nets_needs_no_torch(poison, tmp_path) -> None:
    """``python -m agegender.export output=model.onnx`` without torch: the graph built from the
    cached caffemodels, one self-contained file, giving the installed graph's probabilities."""
    from agegender.caffe_io import check_inputs
    from agegender.onnx_session import ort_session

    installed = original_onnx_path()
    require(installed.is_file(), f"original weights not exported: {WEIGHTS_HINT}")
    output = tmp_path / "model.onnx"
    run = _run(["-m", "agegender.export", f"output={output}"], poison)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"export: {output} (opencv (caffe) max |dp| ")
    assert output.is_file() and not Path(f"{output}.data").exists()
    x = check_inputs(6, seed=2)
    for a, b in zip(
        ort_session(installed).run(None, {"input": x}),
        ort_session(output).run(None, {"input": x}),
        strict=True,
    ):
        assert float(np.abs(a - b).max()) <= 1e-6
