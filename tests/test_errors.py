"""One base exception and one handler: every exception class agegender defines derives from
:class:`~agegender.errors.AgeGenderError`, and every entry point turns one into a single line
on stderr and exit code 2, while an unexpected error keeps its traceback."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import agegender
from agegender.errors import EXIT_CODE, AgeGenderError, CheckpointError, handled, report

REPO = Path(__file__).resolve().parents[1]

#: Modules whose import needs an optional extra (``pip install agegender[serve]`` ...): the
#: walk skips them only when that extra is missing here.
_OPTIONAL = ("litserve", "gradio", "optuna", "timm", "torch", "lightning")


def _project_modules() -> list[object]:
    """Every importable agegender module (those needing an absent optional extra skipped)."""
    modules = []
    for info in pkgutil.walk_packages(agegender.__path__, "agegender."):
        try:
            modules.append(importlib.import_module(info.name))
        except ImportError as exc:  # an optional extra that is not installed
            if exc.name is None or exc.name.split(".")[0] not in _OPTIONAL:
                raise
    return modules


def _exception_classes() -> dict[str, type[BaseException]]:
    found = {}
    for module in _project_modules():
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("agegender"):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_every_project_exception_derives_from_agegender_error():
    classes = _exception_classes()
    assert len(classes) >= 20, sorted(classes)  # the walk found the package's exceptions
    stray = sorted(name for name, cls in classes.items() if not issubclass(cls, AgeGenderError))
    assert not stray, f"not AgeGenderError subclasses: {stray}"


def test_builtin_second_bases_are_kept():
    """Callers (and tests) catching the builtin still catch the project's error."""
    from agegender.inference.inputs import InputNotFoundError
    from agegender.store import ChecksumError, WeightsNotFoundError

    assert issubclass(WeightsNotFoundError, FileNotFoundError)
    assert issubclass(InputNotFoundError, FileNotFoundError)
    assert issubclass(ChecksumError, ValueError) and issubclass(CheckpointError, ValueError)


def test_handled_turns_an_agegender_error_into_one_line_and_exit_2(capsys):
    seen = []

    @handled("prog", on_error=seen.append)
    def main() -> int:
        raise CheckpointError("bad.ckpt is not a checkpoint:\n  give a .ckpt file")

    assert main() == EXIT_CODE == 2
    err = capsys.readouterr().err
    assert err == "prog: bad.ckpt is not a checkpoint: give a .ckpt file\n"
    assert len(seen) == 1 and isinstance(seen[0], CheckpointError)


def test_handled_exits_for_hydra_task_functions(capsys):
    @handled("train", exits=True)
    def main() -> float:
        raise AgeGenderError("fix this")

    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2 and capsys.readouterr().err == "train: fix this\n"


def test_handled_lets_unexpected_errors_through():
    @handled("prog")
    def main() -> int:
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        main()

    @handled("prog", builtin=(FileNotFoundError,))
    def missing() -> int:
        raise FileNotFoundError("no such file: x")

    assert missing() == 2


def test_report_is_one_line(capsys):
    assert report("card", AgeGenderError("a\nb")) == 2
    assert capsys.readouterr().err == "card: a b\n"


def _fail(error: BaseException):
    def raise_it(*args: object, **kwargs: object) -> None:
        raise error

    return raise_it


def _entry_points(tmp_path: Path):
    """(name, module, attribute the entry point calls, argv) of each ``main(argv) -> int``."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    return [
        ("export", "agegender.export", "export_model", [f"output={tmp_path / 'm.onnx'}"]),
        ("card", "agegender.card", "write_card", [f"output={tmp_path / 'card.md'}"]),
        ("agegender.serve", "agegender.serve", "AgeGender", []),
        ("agegender.app", "agegender.app", "load_agegender", []),
        ("agegender.weights", "agegender.weights", "measure_and_record", ["measure"]),
        ("agegender.crossval", "agegender.crossval", "aggregate", [str(sweep)]),
        ("agegender.data.folds", "agegender.data.folds", "load_folds", [str(tmp_path)]),
        ("agegender.data.csv", "agegender.data.csv", "adience_to_csv", ["adience", str(sweep)]),
        ("agegender.data.demo", "agegender.data.demo", "generate_demo", [str(tmp_path / "d")]),
        ("merge", "agegender.inference.merge", "merge_shards", [str(tmp_path)]),
    ]


@pytest.mark.parametrize("index", range(10))
def test_each_entry_point_reports_an_agegender_error_in_one_line(index, tmp_path, monkeypatch):
    prog, module_name, attribute, argv = _entry_points(tmp_path)[index]
    module = importlib.import_module(module_name)
    monkeypatch.setattr(module, attribute, _fail(AgeGenderError("fix the thing\nthis way")))
    monkeypatch.setattr("signal.signal", lambda *args: None)  # the app's SIGTERM handler
    captured = []
    monkeypatch.setattr("sys.stderr", _Lines(captured))
    assert module.main(argv) == 2
    assert captured == [f"{prog}: fix the thing this way\n"]


@pytest.mark.parametrize("index", range(10))
def test_each_entry_point_keeps_the_traceback_of_an_unexpected_error(index, tmp_path, monkeypatch):
    _, module_name, attribute, argv = _entry_points(tmp_path)[index]
    module = importlib.import_module(module_name)
    monkeypatch.setattr(module, attribute, _fail(ZeroDivisionError("a bug")))
    monkeypatch.setattr("signal.signal", lambda *args: None)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        module.main(argv)


class _Lines:
    """A stderr that records each write (print writes the text and its newline at once)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, text: str) -> int:
        if self.lines and not self.lines[-1].endswith("\n"):
            self.lines[-1] += text
        else:
            self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["predict.py", "input={missing}", "output={out}"], "predict: "),
        (["-m", "agegender.evaluate", "set=banana", "output={out}"], "evaluate: set must be"),
        (
            ["train.py", "ckpt_path={missing}", "hydra.run.dir={out}"],
            "train: ckpt_path=",
        ),
    ],
)
def test_hydra_entry_points_report_in_one_line_and_exit_2(args, line, tmp_path):
    names = {"missing": tmp_path / "missing.ckpt", "out": tmp_path / "out"}
    run = subprocess.run(
        [sys.executable, *(a.format(**names) for a in args)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    lines = [x for x in run.stderr.splitlines() if x.startswith(line.split(":")[0] + ":")]
    assert len(lines) == 1 and lines[0].startswith(line), run.stderr[-2000:]
