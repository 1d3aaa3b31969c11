"""Export to ONNX and TorchScript: onnxruntime, OpenCV and torch.jit give our network's
probabilities on real face crops, and the README's deployment recipe runs without torch."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, SAMPLES, require
from tests.training_fixtures import PAPER_TWO_STEPS, compose_train, demo_root

TOLERANCE = 1e-4


def real_crops(classifier) -> torch.Tensor:  # noqa: ANN001
    """The classifier's own inputs for every face MTCNN finds in the sample photos (aligned,
    resized, centre-cropped by the shared pipeline): what an export must classify alike."""
    from agegender.faces import build_detector
    from agegender.inference import Pipeline, iter_inputs

    pipeline = Pipeline(build_detector("mtcnn"), classifier, workers=1)
    crops = [c for item in iter_inputs(SAMPLES) for c in pipeline.prepare(item).crops]
    assert len(crops) >= 4
    return torch.stack(crops)


def reference(classifier, crops: torch.Tensor) -> dict[str, np.ndarray]:  # noqa: ANN001
    return classifier.predict(crops)


def check_onnx(path: Path, classifier, crops: torch.Tensor) -> dict[str, float]:  # noqa: ANN001
    from agegender.export import read_metadata, run_onnx

    expected = reference(classifier, crops)
    tasks = json.loads(read_metadata(path)["outputs"])
    diffs = {}
    for runtime in ("onnxruntime", "opencv"):
        for batch in (crops, crops[:1], crops[:3]):  # dynamic batch size
            outputs = run_onnx(path, batch.numpy(), runtime)
            for task, out in zip(tasks, outputs, strict=True):
                assert out.shape == (len(batch), len(classifier.labels.class_names[task]))
                diff = float(np.abs(out - expected[task][: len(batch)]).max())
                diffs[runtime] = max(diffs.get(runtime, 0.0), diff)
    assert max(diffs.values()) <= TOLERANCE, diffs
    return diffs


def test_original_weights_export_matches_in_onnxruntime_and_opencv(
    original_classifier,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    from agegender.export import export_model, read_metadata

    out = tmp_path / "x.onnx"
    export_model(out, download=False)
    crops = real_crops(original_classifier)
    check_onnx(out, original_classifier, crops)
    meta = read_metadata(out)
    names = original_classifier.labels.class_names
    assert json.loads(meta["labels"]) == {k: list(v) for k, v in names.items()}
    assert json.loads(meta["label_set"]) == {"name": "adience8"}
    assert (meta["crop_size"], meta["face_size"], meta["input_channel_order"]) == (
        "227",
        "256",
        "RGB",
    )
    assert meta["network_channel_order"] == "BGR" and len(json.loads(meta["mean"])) == 3


def test_weights_file_layout_gives_the_same_outputs(original_classifier, tmp_path: Path) -> None:  # noqa: ANN001
    """The install step's layout (weights in ``.data`` beside the graph, mapped by
    onnxruntime): the same probabilities as the single-file export, the same metadata."""
    from agegender.export import export_model, read_metadata, run_onnx

    single, split = tmp_path / "single.onnx", tmp_path / "split.onnx"
    export_model(single, download=False)
    export_model(split, download=False, weights_file=True)
    weights = tmp_path / "split.onnx.data"
    assert split.stat().st_size < 100_000 < weights.stat().st_size
    assert weights.stat().st_mode & 0o777 == single.stat().st_mode & 0o777  # the umask's
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "single.onnx",
        "split.onnx",
        "split.onnx.data",
    ]  # fmt: skip - no temporary left behind
    crops = real_crops(original_classifier).numpy()
    for a, b in zip(run_onnx(single, crops, "onnxruntime"), run_onnx(split, crops, "onnxruntime"),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    assert read_metadata(split) == read_metadata(single)


def test_torchscript_export_gives_the_same_outputs(original_classifier, tmp_path: Path) -> None:  # noqa: ANN001
    import warnings

    from agegender.export import export_model, read_metadata

    out = tmp_path / "x.pt"
    export_model(out, download=False)  # format from the suffix
    crops = real_crops(original_classifier)
    expected = reference(original_classifier, crops)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(out))
    with torch.no_grad():
        age, gender = loaded(crops)
    assert float(np.abs(age.numpy() - expected["age"]).max()) <= TOLERANCE
    assert float(np.abs(gender.numpy() - expected["gender"]).max()) <= TOLERANCE
    assert json.loads(read_metadata(out)["labels"])["gender"] == ["male", "female"]


def test_a_naive_export_is_caught(original_classifier, tmp_path: Path) -> None:  # noqa: ANN001
    """The check is what stands between a user and a wrong model: exporting the inference
    net as it is (in-place LRN slice sums, a negative-step flip) must fail it."""
    from agegender.export import ExportError, export_metadata, export_onnx
    from agegender.models.exportable import ExportableNet

    class Naive(ExportableNet):
        def __init__(self, model: torch.nn.Module) -> None:
            torch.nn.Module.__init__(self)
            self.net = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
            self.face_spec = model.face_spec
            self.tasks = tuple(model.tasks)
            self.temperatures = {}
            self.eval()

    naive = Naive(original_classifier.model)
    meta = export_metadata(naive, "adience8", "naive")
    with pytest.raises(ExportError, match="differs from the network|cannot run it"):
        export_onnx(naive, tmp_path / "naive.onnx", meta)
    assert not (tmp_path / "naive.onnx").exists()


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:  # noqa: ANN001
    """A checkpoint written by train.py: the paper's recipe with a per-pixel mean image (so
    the export must carry the training split's mean, not the Caffe channel means)."""
    from agegender.training.fit import train

    demo = demo_root(tmp_path_factory)
    out = tmp_path_factory.mktemp("export_run")
    overrides = [*PAPER_TWO_STEPS, f"data.root={demo}"]
    train(compose_train(overrides, out))
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.slow  # trains 2 steps on the demo tree (~20 s); CI runs the slow tests too
def test_train_py_checkpoint_exports_through_the_command(
    trained_checkpoint: Path, tmp_path: Path
) -> None:
    from agegender.export import read_metadata
    from agegender.runtime.build import build_classifier

    out = tmp_path / "trained.onnx"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "agegender.export",
            f"checkpoint={trained_checkpoint}",
            f"output={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "onnxruntime max |dp|" in run.stdout and "opencv max |dp|" in run.stdout
    classifier, _ = build_classifier(trained_checkpoint)
    assert classifier.face_spec.mean_image  # the checkpoint carries a training mean image
    check_onnx(out, classifier, real_crops(classifier))
    assert read_metadata(out)["mean_image"] == "true"


def test_export_command_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    for args, message in (
        ([f"checkpoint={bad}", f"output={tmp_path / 'x.onnx'}"], "export:"),
        (
            [f"checkpoint={tmp_path / 'missing.ckpt'}", f"output={tmp_path / 'x.onnx'}"],
            "does not exist",
        ),
        (["format=onnx"], "output=FILE is required"),
        ([f"output={tmp_path / 'x.onnx'}", "format=tflite"], "format must be one of"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "agegender.export", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 2 and message in run.stderr, (args, run.stderr)
        assert "Traceback" not in run.stderr
    assert not (tmp_path / "x.onnx").exists()


# -- the README's deployment recipe -------------------------------------------------------------
def readme_recipe() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- recipe -->\n```python\n(.*?)```", text, re.S)
    assert match, "README: the deployment recipe follows <!-- recipe -->"
    return match.group(1)


def test_readme_recipe_runs_without_torch_and_gives_predict_py_labels(
    original_classifier,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    from agegender.export import export_model
    from agegender.store import ensure_gag_asset

    recipe = readme_recipe()
    assert len(recipe.strip().splitlines()) <= 30
    assert "torch" not in re.sub(r"#.*", "", recipe)
    try:
        pb = ensure_gag_asset("opencv_face_detector_uint8.pb", download=False)
        pbtxt = ensure_gag_asset("opencv_face_detector.pbtxt", download=False)
    except Exception as error:  # noqa: BLE001 - the same rule as for the weights
        require(False, f"OpenCV SSD files not cached ({error})")
    model = tmp_path / "model.onnx"
    export_model(model, download=False)
    script = tmp_path / "recipe.py"
    script.write_text(recipe)
    # a `torch` package that cannot be imported, first on the path: the recipe's process
    # fails if anything it imports pulls torch in
    poison = tmp_path / "poison" / "torch"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text('raise ImportError("the recipe imported torch")\n')
    photos = sorted(str(p) for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".png"))
    run = subprocess.run(
        [sys.executable, str(script), str(model), str(pb), str(pbtxt), *photos],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(poison.parent), "PATH": ""},
    )
    assert run.returncode == 0, run.stderr
    got = [json.loads(line) for line in run.stdout.splitlines()]

    predict = subprocess.run(
        [
            sys.executable,
            "predict.py",
            f"input={SAMPLES}",
            f"output={tmp_path / 'p'}",
            "detector=opencv_ssd",
            "annotate=false",
            "progress=false",
            "format=jsonl",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert predict.returncode == 0, predict.stderr
    rows = [
        json.loads(line) for line in (tmp_path / "p" / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(got) == len(rows) >= 4
    for row in rows:
        (mine,) = [
            r
            for r in got
            if Path(r["photo"]).name == Path(row["path"]).name
            and np.allclose(r["box"], row["box"], atol=0.2)
        ]
        assert (mine["age"], mine["gender"]) == (row["age"], row["gender"])
        assert mine["age_prob"] == pytest.approx(row["age_prob"], abs=5e-3)
        assert mine["gender_prob"] == pytest.approx(row["gender_prob"], abs=5e-3)
