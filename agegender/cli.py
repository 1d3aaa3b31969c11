"""``agegender COMMAND ...``: one console command that starts every tool of the project.

    agegender --help                                   # the commands, one line each
    agegender predict input=data/samples output=/tmp/out
    agegender predict --help                           # its settings file, an example, Hydra's help

This is a dispatcher and nothing more: it reads the first word and hands the rest of the
command line, unchanged, to the tool's existing entry, run exactly as ``python predict.py`` or
``python -m agegender.evaluate`` runs it (as ``__main__``, with ``sys.argv`` set). Why not call
each tool's ``main`` directly: ``@hydra.main`` finds ``conf/`` from the file of the decorated
function only when that function's module is ``__main__`` (Hydra resolves a package module's
config path through ``pkg://``, which does not reach the checkout's ``conf/``), and
``predict.py``'s exit handling lives in its ``__main__`` block. Running the same code the same
way keeps one behaviour per tool, so ``predict.py`` and ``train.py`` stay as aliases.

Imports are deferred to the chosen command: ``agegender --help`` imports only the standard
library (no torch, no Hydra), so listing the commands is instant.
"""

from __future__ import annotations

import ast
import os
import runpy
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: The checkout the package is installed from (``pip install -e``): ``predict.py``,
#: ``train.py`` and ``conf/`` sit beside the package, as :data:`agegender.config.CONF_DIR`
#: assumes (not imported here: this module stays standard-library only).
REPO = Path(__file__).resolve().parent.parent

HELP_FLAGS = frozenset({"-h", "--help"})


@dataclass(frozen=True)
class Command:
    """One console command: what it runs and what its help says before the tool's own."""

    name: str
    summary: str
    #: ``predict.py`` (a script of the checkout) or ``agegender.evaluate`` (a module)
    target: str
    example: str
    #: the Hydra settings file, or "" for tools with their own arguments
    settings: str = ""
    #: arguments put before the user's (``experiment=cv`` for ``cv``)
    prefix: tuple[str, ...] = ()
    #: the tool answers ``--help`` itself (Hydra, argparse); otherwise its module docstring
    own_help: bool = True

    @property
    def is_script(self) -> bool:
        return self.target.endswith(".py")

    @property
    def alias(self) -> str:
        """The command this one equals, as the README and the tools' messages spell it."""
        start = f"python {self.target}" if self.is_script else f"python -m {self.target}"
        return " ".join([start, *self.prefix])


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "predict",
            "age and gender of every face in an image, a folder, a video, a camera or a stream",
            "predict.py",
            "agegender predict input=data/samples output=/tmp/out",
            settings="conf/predict.yaml",
        ),
        Command(
            "train",
            "fit and test one fold (PyTorch Lightning)",
            "train.py",
            "agegender train experiment=levi_hassner data.fold=0 data.root=data/adience",
            settings="conf/train.yaml",
        ),
        Command(
            "evaluate",
            "any model on a labelled set: a report of where it fails",
            "agegender.evaluate",
            "agegender evaluate set=adience root=data/adience fold=0 output=/tmp/eval",
            settings="conf/evaluate.yaml",
        ),
        Command(
            "cv",
            "the paper's five-fold cross-validation table (or rebuild it: agegender cv DIR)",
            "train.py",
            "agegender cv data.root=data/adience",
            settings="conf/train.yaml + conf/experiment/cv.yaml",
            prefix=("experiment=cv",),
        ),
        Command(
            "sweep",
            "hyperparameter search with Optuna (a Hydra multirun of train)",
            "train.py",
            "agegender sweep experiment=levi_hassner data.fold=0 hydra.sweeper.n_trials=30",
            settings="conf/train.yaml + conf/hparams_search/optuna.yaml",
            prefix=("hparams_search=optuna",),
        ),
        Command(
            "export",
            "a model as ONNX (fp32 or int8) or TorchScript, checked against PyTorch",
            "agegender.export",
            "agegender export checkpoint=outputs/.../last.ckpt output=model.onnx",
            own_help=False,
        ),
        Command(
            "card",
            "a model card (Markdown) from a checkpoint or export and an evaluation report",
            "agegender.card",
            "agegender card checkpoint=outputs/.../best.ckpt report=eval/ output=CARD.md",
            own_help=False,
        ),
        Command(
            "serve",
            "REST prediction server (LitServe): POST /predict, /predict/batch",
            "agegender.serve",
            "agegender serve --port 8000 detector=retinaface",
        ),
        Command(
            "demo",
            "web demo (Gradio): upload photos, see age and gender of every face",
            "agegender.app",
            "agegender demo --port 7860",
        ),
        Command(
            "weights",
            "obtain and convert the original weights; measure the fastest runtime here",
            "agegender.weights",
            "agegender weights original",
        ),
    )
}

#: ``agegender cv DIR``: aggregate an existing multirun directory again
CV_TABLE = "agegender.crossval"


def overview() -> str:
    """``agegender --help``: every command with one line, and where each one's help is."""
    width = max(map(len, COMMANDS))
    lines = [
        "usage: agegender COMMAND [key=value ...] [-m]",
        "",
        "Age and gender with the Levi-Hassner CNN. Commands:",
        "",
        *(f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS.values()),
        "",
        "Each command's settings and an example: agegender COMMAND --help",
        "Hydra commands (predict, train, evaluate, cv, sweep) take key=value overrides and -m;",
        "python predict.py and python train.py remain as aliases of agegender predict / train.",
    ]
    return "\n".join(lines)


def header(command: Command) -> str:
    """What ``agegender COMMAND --help`` prints before the tool's own help."""
    lines = [f"agegender {command.name}: {command.summary}", f"  same as:  {command.alias}"]
    if command.settings:
        lines.append(
            f"  settings: {command.settings} (override any key=value; -m runs several jobs)"
        )
    lines.append(f"  example:  {command.example}")
    if command.name == "cv":
        lines.append(f"  agegender cv DIR: rebuild the table of a finished run ({CV_TABLE})")
    return "\n".join(lines)


def module_doc(module: str) -> str:
    """A module's docstring read from its source, not imported: the help of the key=value tools
    (export, card), which answer ``--help`` with a usage error, without loading numpy/onnx."""
    path = REPO.joinpath(*module.split(".")).with_suffix(".py")
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def run_script(path: Path, args: Sequence[str]) -> None:
    """``python path args...``: as ``__main__``, its folder first on ``sys.path``."""
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.parent))
    runpy.run_path(str(path), run_name="__main__")


def run_module(module: str, args: Sequence[str]) -> None:
    """``python -m module args...``: as ``__main__``, the working directory on ``sys.path``."""
    sys.argv = [module, *args]  # runpy replaces argv[0] with the module's file
    sys.path.insert(0, os.getcwd())
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry ``agegender``: the first word picks the tool, the rest goes to it as is.

    Returns the exit code for the dispatcher's own answers (help, unknown command); a tool's
    own exit code leaves through its ``SystemExit``, as it does when started directly."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(overview(), file=sys.stderr)
        return 2
    first, rest = args[0], args[1:]
    if first in HELP_FLAGS or first == "help":
        print(overview())
        return 0
    if first == "--version":
        from agegender import __version__

        print(f"agegender {__version__}")
        return 0
    command = COMMANDS.get(first)
    if command is None:
        names = " ".join(COMMANDS)
        print(f"agegender: unknown command {first!r}; commands: {names}", file=sys.stderr)
        return 2
    if HELP_FLAGS & set(rest):
        print(header(command), flush=True)
        if not command.own_help:
            print(f"\n{module_doc(command.target)}")
            return 0
        print(flush=True)
    if command.name == "cv" and rest and not rest[0].startswith("-") and "=" not in rest[0]:
        run_module(CV_TABLE, rest)
        return 0
    if command.is_script:
        script = REPO / command.target
        if not script.is_file():
            print(
                f"agegender {command.name}: {script} not found; agegender runs from its checkout "
                "(pip install -e .)",
                file=sys.stderr,
            )
            return 2
        run_script(script, [*command.prefix, *rest])
    else:
        run_module(command.target, [*command.prefix, *rest])
    return 0


if __name__ == "__main__":
    sys.exit(main())
