"""The README's promises that code can check: its two set-up commands are exactly what CI
runs, and every config group, experiment and module it names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_setup_commands_are_what_ci_runs() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(first_block) == 2, "the README starts with exactly two set-up commands"
    install, test = first_block
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert install in ci
    assert test in ci
    assert "pytest" in test and "pip install" in install


def test_named_configs_exist() -> None:
    pattern = r"\b(experiment|hydra/launcher|hparams_search|data|model|trainer|logger|debug)=(\w+)"
    names = re.findall(pattern, README)
    assert len(names) > 10
    for group, name in names:
        folder = REPO / "conf" / group
        if group == "hydra/launcher" and name in {"joblib", "submitit_slurm"}:
            continue  # the plugins' own configs
        assert (folder / f"{name}.yaml").is_file(), f"README names {group}={name}"


def test_named_modules_and_scripts_exist() -> None:
    for module in set(re.findall(r"python -m (agegender[\w.]*)", README)):
        path = REPO / Path(*module.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), module
    for script in set(re.findall(r"(benchmarks/\w+\.py)", README)):
        assert (REPO / script).is_file(), script
