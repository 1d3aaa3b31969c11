"""The ``agegender`` console command (agegender/cli.py): one way to start every tool.

The dispatcher must add nothing of its own to a tool's run, so the checks compare it with the
tool started directly (the same predictions.csv as predict.py), and its help must stay
instant (no torch import), since ``agegender --help`` is the first thing a user types.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import tomllib

from agegender import cli

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "agegender"
#: the installed console script (pip install -e .); the module when the venv has none
AGEGENDER = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "agegender.cli"]


def agegender(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGEGENDER, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_console_script_is_registered() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["agegender"] == "agegender.cli:main"
    assert scripts["agegender-weights"] == "agegender.weights:main"
    installed = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    assert installed.get("agegender") == "agegender.cli:main", "pip install -e . again"


def test_help_lists_every_command() -> None:
    proc = agegender("--help")
    assert proc.returncode == 0, proc.stderr
    for name, command in cli.COMMANDS.items():
        assert f"  {name}" in proc.stdout and command.summary in proc.stdout
    assert "predict.py" in proc.stdout and "train.py" in proc.stdout  # the aliases


def test_help_imports_neither_torch_nor_hydra() -> None:
    code = (
        "import sys\n"
        "from agegender.cli import main\n"
        "assert main(['--help']) == 0\n"
        "heavy = sorted({'torch', 'hydra', 'numpy', 'cv2'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_command_has_its_own_help(name: str, tmp_path: Path) -> None:
    command = cli.COMMANDS[name]
    proc = agegender(name, "--help", cwd=tmp_path)  # not the checkout: conf/ still found
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"agegender {name}: {command.summary}")
    assert f"example:  {command.example}" in out
    if command.settings:  # Hydra: the settings file, then Hydra's help of the composed config
        assert f"settings: {command.settings}" in out
        assert "powered by Hydra" in out and "== Config ==" in out
    elif command.own_help:  # argparse
        assert f"usage: python -m {command.target}" in out
    else:  # key=value tools: their module's usage text
        assert f"python -m {command.target} " in out


def test_cv_and_sweep_set_their_config_group() -> None:
    cv = agegender("cv", "--help")
    assert cv.returncode == 0, cv.stderr
    assert "task_name: levi_hassner_cv" in cv.stdout  # experiment=cv
    sweep = agegender("sweep", "--help")
    assert sweep.returncode == 0, sweep.stderr
    assert "test: false" in sweep.stdout  # hparams_search=optuna: trials never test


def test_dispatch_hands_the_arguments_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(cli, "run_script", lambda path, args: calls.append((path.name, args)))
    monkeypatch.setattr(cli, "run_module", lambda module, args: calls.append((module, args)))
    assert cli.main(["predict", "input=x", "-m", "shard=0,1", "num_shards=2"]) == 0
    assert cli.main(["train", "data.fold=1"]) == 0
    assert cli.main(["cv", "data.root=d"]) == 0
    assert cli.main(["cv", "multirun/x"]) == 0
    assert cli.main(["sweep", "hydra.sweeper.n_trials=3"]) == 0
    assert cli.main(["evaluate", "set=csv"]) == 0
    assert cli.main(["demo", "--port", "1", "detector=retinaface"]) == 0
    assert calls == [
        ("predict.py", ["input=x", "-m", "shard=0,1", "num_shards=2"]),
        ("train.py", ["data.fold=1"]),
        ("train.py", ["experiment=cv", "data.root=d"]),
        ("agegender.crossval", ["multirun/x"]),
        ("train.py", ["hparams_search=optuna", "hydra.sweeper.n_trials=3"]),
        ("agegender.evaluate", ["set=csv"]),
        ("agegender.app", ["--port", "1", "detector=retinaface"]),
    ]


def test_unknown_command_is_one_line_and_exit_2() -> None:
    proc = agegender("pedict", "input=x")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'pedict'" in lines[0]
    assert all(name in lines[0] for name in cli.COMMANDS)


def test_no_command_prints_the_list_and_exit_2() -> None:
    proc = agegender()
    assert proc.returncode == 2
    assert "usage: agegender COMMAND" in proc.stderr


def test_cv_dir_rebuilds_the_table_through_crossval(tmp_path: Path) -> None:
    proc = agegender("cv", str(tmp_path))
    assert proc.returncode == 2  # crossval's own answer for a folder without Hydra jobs
    assert "no Hydra job directories" in proc.stderr


def test_predict_writes_the_same_csv_as_predict_py(tmp_path: Path) -> None:
    settings = ["input=data/samples", "annotate=false", "progress=false"]
    ours = agegender("predict", *settings, f"output={tmp_path / 'cli'}")
    assert ours.returncode == 0, ours.stderr
    direct = subprocess.run(
        [sys.executable, "predict.py", *settings, f"output={tmp_path / 'script'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert direct.returncode == 0, direct.stderr
    got = pd.read_csv(tmp_path / "cli" / "predictions.csv")
    expected = pd.read_csv(tmp_path / "script" / "predictions.csv")
    assert len(got) >= 4
    pd.testing.assert_frame_equal(got, expected)


def test_readme_table_names_every_command() -> None:
    readme = (REPO / "README.md").read_text()
    for name in cli.COMMANDS:
        assert f"| `agegender {name}` |" in readme, f"README's Commands table lacks {name}"
