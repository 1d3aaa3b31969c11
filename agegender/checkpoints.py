"""Our model checkpoint format, and loading the Lightning checkpoints train.py writes.

A checkpoint stores the network as plain data, ``(model_name, model_kwargs, state_dict)``,
and is rebuilt through :func:`agegender.models.build_model`. Nothing is pickled but tensors
and builtin containers, so every file loads with ``torch.load(weights_only=True)``: opening a
checkpoint someone sent you cannot run their code.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agegender.calibration import CalibrationError, check_calibration
from agegender.errors import (
    CheckpointError,  # noqa: F401 - defined there, raised here
    CheckpointNotFoundError,
)
from agegender.fileio import atomic_write
from agegender.labels import label_set_of_model, load_label_set
from agegender.models import build_model
from agegender.spec import FaceSpec, Framing, framing_from_stored

#: Value of the ``"format"`` key of our own checkpoints.
FORMAT = "agegender.model.v1"
#: Top-level key of a checkpoint's temperature-scaling record (both formats).
CALIBRATION_KEY = "calibration"
#: Top-level key of a checkpoint's framing (both formats; absent = the legacy framing).
FRAMING_KEY = "framing"
#: Prefix of the network's keys in a Lightning checkpoint (the module holds ``self.model``).
LIGHTNING_PREFIX = "model."
#: Inserted into parameter names by ``torch.compile``; stripped so compiled runs load too.
_COMPILED_INFIX = "_orig_mod."

_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    """Refuse anything ``weights_only`` loading would reject later (e.g. an OmegaConf
    DictConfig): failing at save time names the culprit, failing at load time cannot."""
    if isinstance(value, (*_PLAIN_SCALARS, torch.Tensor)):
        return
    if isinstance(value, Mapping) and type(value) is dict:
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is not a str or int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoints hold only str/int/float/bool/None, "
        "tensors, and dicts/lists/tuples of them (convert OmegaConf configs with "
        "OmegaConf.to_container(cfg, resolve=True))"
    )


def save_model(
    model: nn.Module,
    model_name: str,
    model_kwargs: Mapping[str, Any],
    path: str | os.PathLike[str],
    meta: Mapping[str, Any] | None = None,
    labels: Any = None,
    calibration: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` so that :func:`load_model` rebuilds it with
    ``build_model(model_name, **model_kwargs)``; returns the path written.

    ``labels``: the label set the age head was trained on (a :class:`~agegender.labels.
    LabelSet` or its name/definition), stored as plain data under ``"labels"``; None
    writes no key (= adience8, as every checkpoint written before label sets).
    ``calibration``: a temperature-scaling record (:mod:`agegender.calibration`), stored
    under ``"calibration"``; None: an uncalibrated model."""
    kwargs = dict(model_kwargs)
    meta = dict(meta or {})
    _check_plain(kwargs, "model_kwargs")
    _check_plain(meta, "meta")
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "model_name": str(model_name),
        "model_kwargs": kwargs,
        "state_dict": state,
        "meta": meta,
    }
    if labels is not None:
        payload["labels"] = load_label_set(labels).to_config()
    if calibration is not None:
        payload[CALIBRATION_KEY] = check_calibration(calibration)
    spec = getattr(model, "face_spec", None)
    if isinstance(spec, FaceSpec):
        payload[FRAMING_KEY] = spec.framing.to_config()
    path = Path(path)
    atomic_write(path, lambda handle: torch.save(payload, handle))
    return path


def _read(path: Path, map_location: Any) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    try:
        # Zip-format files (every torch.save since 1.6) are memory-mapped: the tensors are
        # read from the page cache as load_state_dict copies them, not held twice.
        mmap = zipfile.is_zipfile(path)
        with warnings.catch_warnings():  # torch's note on a foreign pickle protocol: noise
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path} holds objects that are unsafe to unpickle (weights_only=True refused "
            f"them: {first}). agegender checkpoints contain only tensors and plain data; a "
            "Lightning checkpoint whose hyper-parameters are OmegaConf objects must be "
            "re-saved with plain dicts."
        ) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError... on junk
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


def check_readable(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a checkpoint that loads as plain data (``weights_only``), else a
    :class:`CheckpointError` in one line (a pickle that would run code, a file that is no
    checkpoint): what train.py checks before Lightning reads it."""
    path = Path(path)
    _read(path, "cpu")
    return path


def _strip_compiled(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace(_COMPILED_INFIX, ""): v for k, v in state.items()}


def _unpack(ckpt: dict[str, Any], path: Path) -> tuple[str, dict[str, Any], dict, dict]:
    """-> (model_name, model_kwargs, network state_dict, meta) for either format; the meta
    holds ``labels`` when the checkpoint stores a label set (absent: adience8) and
    ``calibration`` when it stores a temperature-scaling record."""
    name, kwargs, state, meta = _unpack_network(ckpt, path)
    try:
        meta[FRAMING_KEY] = framing_from_stored(ckpt.get(FRAMING_KEY)).to_config()
    except ValueError as exc:
        raise CheckpointError(f"{path}: malformed framing ({exc})") from None
    if ckpt.get(CALIBRATION_KEY) is not None:
        try:
            meta[CALIBRATION_KEY] = check_calibration(ckpt[CALIBRATION_KEY])
        except CalibrationError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    return name, kwargs, state, meta


def _unpack_network(ckpt: dict[str, Any], path: Path) -> tuple[str, dict[str, Any], dict, dict]:
    if ckpt.get("format") == FORMAT:
        meta = dict(ckpt["meta"])
        if ckpt.get("labels") is not None:
            meta["labels"] = ckpt["labels"]
        return ckpt["model_name"], dict(ckpt["model_kwargs"]), ckpt["state_dict"], meta
    if "format" in ckpt:
        raise CheckpointError(f"{path}: unsupported checkpoint format {ckpt['format']!r}")
    if "state_dict" in ckpt and "hyper_parameters" in ckpt:
        hparams = ckpt["hyper_parameters"]
        if "model_name" not in hparams:
            raise CheckpointError(
                f"{path}: Lightning checkpoint without hyper_parameters['model_name'] "
                "(was it written by train.py?)"
            )
        state = {
            k[len(LIGHTNING_PREFIX) :]: v
            for k, v in ckpt["state_dict"].items()
            if k.startswith(LIGHTNING_PREFIX)
        }
        if not state:
            raise CheckpointError(f"{path}: Lightning checkpoint has no '{LIGHTNING_PREFIX}*' keys")
        meta = {
            "source": "lightning",
            "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"),
            "hyper_parameters": dict(hparams),
        }
        if hparams.get("labels") is not None:
            meta["labels"] = hparams["labels"]
        return hparams["model_name"], dict(hparams.get("model_kwargs") or {}), state, meta
    raise CheckpointError(
        f"{path} is neither an agegender model checkpoint (format {FORMAT!r}) nor a "
        "Lightning checkpoint written by train.py"
    )


def _build_with_weights(name: str, kwargs: dict[str, Any], state: Mapping[str, Any]) -> nn.Module:
    """The network with ``state`` as its tensors.

    Built on the meta device and given the checkpoint's (memory-mapped) tensors themselves
    (``assign=True``): no random initialisation to overwrite and no second copy of the
    weights (prediction's cold start: ~0.3 s and ~90 MB for the Levi-Hassner pair). A network
    whose constructor makes tensors the state does not hold (non-persistent buffers) is built
    the ordinary way instead.
    """
    with torch.device("meta"):
        model = build_model(name, **kwargs)
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = build_model(name, **kwargs)
        model.load_state_dict(state, strict=True)
    return model


def load_model(
    path: str | os.PathLike[str], map_location: Any = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored at ``path`` (our format or a train.py Lightning checkpoint);
    returns it in eval mode, with the checkpoint's meta (``meta["labels"]``: the stored label
    set, absent = adience8; :func:`label_set_of` reads it). The network's ``face_spec`` (its
    class's, :mod:`agegender.spec`, with the checkpoint's framing, ``meta["framing"]``;
    absent = the legacy framing) says how to feed it; the ``input_size``/``resize_size``
    hyper-parameters of older Lightning checkpoints are left in the meta, unused."""
    path = Path(path)
    ckpt = _read(path, map_location)
    name, kwargs, state, meta = _unpack(ckpt, path)
    state = _strip_compiled(state)
    try:
        model = _build_with_weights(name, kwargs, state)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build model {name!r} with {kwargs}: {exc}") from None
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit model {name!r} {kwargs}: {exc}"
        ) from None
    spec = getattr(model, "face_spec", None)
    if isinstance(spec, FaceSpec):  # the framing it was trained with (absent: legacy)
        framing = Framing.from_config(meta[FRAMING_KEY])
        model.face_spec = dataclasses.replace(spec, framing=framing)
    if (
        map_location is not None
        and not callable(map_location)
        and not isinstance(map_location, dict)
    ):
        model.to(map_location)
    return model.eval(), dict(meta)


def calibration_of(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The temperature-scaling record of a loaded checkpoint (``meta`` from
    :func:`load_model`), None for an uncalibrated one."""
    record = meta.get(CALIBRATION_KEY)
    return None if record is None else dict(record)


def set_calibration(
    path: str | os.PathLike[str],
    calibration: Mapping[str, Any] | None,
    output: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``path``'s checkpoint (either format) with ``calibration`` as its record (None:
    removed) to ``output`` (default: ``path`` itself, replaced atomically). Everything else
    in the file is kept as it was: a Lightning checkpoint still resumes training."""
    path = Path(path)
    ckpt = _read(path, "cpu")
    _unpack_network(ckpt, path)  # refuse a file load_model could not rebuild
    if calibration is None:
        ckpt.pop(CALIBRATION_KEY, None)
    else:
        ckpt[CALIBRATION_KEY] = check_calibration(calibration)
    target = Path(output) if output is not None else path
    # not memory-mapped while replacing itself: materialise the tensors first
    ckpt = _materialise(ckpt)
    atomic_write(target, lambda handle: torch.save(ckpt, handle))
    return target


def _materialise(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _materialise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_materialise(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_materialise(v) for v in value)
    return value


def label_set_of(meta: Mapping[str, Any]) -> Any:
    """The :class:`~agegender.labels.LabelSet` a loaded checkpoint's network predicts
    (``meta`` from :func:`load_model`); checkpoints without one are adience8."""
    return label_set_of_model(meta.get("labels"))
