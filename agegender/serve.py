"""A prediction server: age and gender as a REST service other programs call.

    python -m agegender.serve [--port 8000] [--host 127.0.0.1] [--api-key K] [key=value ...]

Endpoints (README "Prediction server"): ``POST /predict`` (one image: multipart field
``image``, or JSON ``{"image": "<base64>", "boxes": [[x1, y1, x2, y2], ...]}``),
``POST /predict/batch`` (several images), ``GET /health`` (200 once the model is loaded,
503 before), ``GET /info`` (model, label set, face spec, backend, versions), ``/docs``.
``key=value`` arguments are ``conf/serve.yaml`` settings or ``conf/predict.yaml`` overrides
(``checkpoint=``, ``detector=``, ``backend=`` ...): the server runs the same
:class:`~agegender.api.AgeGender` and :class:`~agegender.inference.pipeline.Pipeline` as
predict.py and the API, so an image gets the same faces and probabilities here.

Built on LitServe (install with ``pip install -e ".[serve]"``) because a service sending
thousands of requests should not run them one at a time: LitServe gathers concurrent
requests (``max_batch_size``, ``batch_timeout``) and hands them to one ``predict`` call, where
the pipeline decodes and detects the images in its loader threads and classifies all their
faces in shared network batches. Safety: uploads are held and decoded in memory (nothing
is written to disk), bodies, images, boxes and pixels are bounded, JSON is parsed as data
(never pickle or code) by the pydantic models of :mod:`agegender.serve_schema`, an
optional API key guards every route but ``/health`` and ``/docs``, and the server binds to
127.0.0.1 unless told otherwise. A bad request gets a JSON error with the reason the CSV's
``status`` column would carry (``not an image``, ``truncated image``, ``too large: ...``) and
400 or 413; it never stops the server.
"""

# No `from __future__ import annotations` here: LitServe and FastAPI read the annotations of
# decode_request and authorize at run time, and need them as objects, not strings.

import argparse
import asyncio
import base64
import binascii
import hmac
import os
import platform
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any

from agegender.api import AgeGender, face_of_box
from agegender.config import load_yaml
from agegender.errors import AgeGenderError, handled, translated
from agegender.inference.inputs import InputItem
from agegender.inference.options import PredictOptions
from agegender.inference.results import FaceResult, ImageResult
from agegender.labels import LabelSet
from agegender.runtime.build import configure_torch_threads

try:  # the `serve` extra; main() says how to install it when missing
    import litserve as ls
    from fastapi import Depends, Request
    from fastapi.responses import JSONResponse
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from agegender.serve_schema import (
        MAX_BOXES_KEY,
        MAX_IMAGES_KEY,
        BatchRequest,
        ImageRequest,
        count_boxes,
        read_form,
        read_json,
        schemas,
    )
except ImportError:  # pragma: no cover - exercised only without the extra
    ls = None

#: The routes that take images.
PREDICT_PATH = "/predict"
BATCH_PATH = "/predict/batch"
#: Routes open without the API key (liveness probes and the API's own documentation).
OPEN_PATHS = frozenset({"/health", "/docs", "/openapi.json", "/docs/oauth2-redirect"})
#: Where the /docs page's Swagger UI files are served from (open, like the page).
DOCS_ASSETS = "/docs/assets"
API_KEY_ENV = "AGEGENDER_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    """``conf/serve.yaml``: the server's own settings (see the comments there)."""

    host: str
    port: int
    api_key: str | None
    max_batch_size: int
    batch_timeout: float
    workers_per_device: int
    api_servers: int
    timeout: float
    max_upload_bytes: int
    max_batch_images: int
    max_boxes_per_image: int
    max_boxes_per_request: int
    read_timeout: float
    log_level: str

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.workers_per_device < 1 or self.api_servers < 1:
            raise ValueError("max_batch_size, workers_per_device and api_servers must be >= 1")
        if self.max_upload_bytes < 1 or self.max_batch_images < 1 or self.batch_timeout < 0:
            raise ValueError("max_upload_bytes, max_batch_images >= 1 and batch_timeout >= 0")
        if self.max_boxes_per_image < 1 or self.max_boxes_per_request < 1:
            raise ValueError("max_boxes_per_image and max_boxes_per_request must be >= 1")
        if not self.read_timeout > 0:
            raise ValueError(f"read_timeout must be > 0 seconds, got {self.read_timeout}")

    @classmethod
    def load(cls, **changes: Any) -> "ServeSettings":
        """``conf/serve.yaml`` with ``changes``; the key falls back to ``AGEGENDER_API_KEY``."""
        from omegaconf import OmegaConf  # deferred like everywhere else

        values = OmegaConf.to_container(load_yaml("serve.yaml"), resolve=True)
        values.update(changes)  # type: ignore[union-attr]
        if not values.get("api_key"):  # type: ignore[union-attr]
            values["api_key"] = os.environ.get(API_KEY_ENV) or None  # type: ignore[index]
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Queued:
    """A request as :class:`RequestLimits` read it: its validated body and when it arrived
    (``time.monotonic()``: one clock for every process of the machine, as LitServe's own
    queue timestamps assume)."""

    body: "ImageRequest | BatchRequest"
    received: float


#: Where :class:`RequestLimits` leaves the request it read for the route (``request.state``).
QUEUED_STATE = "agegender_request"


def queued_request(request: Request) -> Queued:
    """The route's argument (a FastAPI dependency): the body :class:`RequestLimits` already
    parsed and validated, so LitServe hands the model to the workers and nothing parses the
    body a second time."""
    queued = getattr(request.state, QUEUED_STATE, None)
    if queued is None:  # only reachable if the middleware is bypassed
        raise StarletteHTTPException(400, "bad request")
    return queued


#: ``decode_request``'s annotation: LitServe registers the route with it, so FastAPI asks
#: :func:`queued_request` for the argument instead of reading the body.
QueuedParam = Annotated[Queued, Depends(queued_request)] if ls is not None else Queued


@dataclass
class Decoded:
    """One request in a worker: its images, or why the request as a whole is refused."""

    items: list[InputItem] = field(default_factory=list)
    error: str | None = None
    many: bool = False
    received: float = 0.0

    def past(self, timeout: float | None) -> bool:
        """Whether LitServe has already answered this request 504 (``timeout`` passed)."""
        return bool(timeout and timeout > 0) and time.monotonic() - self.received > timeout


def status_code(reason: str) -> int:
    """The HTTP code of a refused image or request: 413 for anything over a limit."""
    return 413 if reason.startswith(("too large", "too many")) else 400


def error_response(reason: str, code: int | None = None) -> "JSONResponse":
    """Every error the server sends: ``{"error": reason}`` with its code. A 408 also closes
    the connection (the body it gave up on would otherwise still be read from the client)."""
    code = code or status_code(reason)
    headers = {"Connection": "close"} if code == 408 else None
    return JSONResponse({"error": reason}, status_code=code, headers=headers)


def _image_bytes(value: str | bytes) -> bytes:
    """An image as sent: the file's bytes (a form) or base64 text (JSON, a data URL too)."""
    if isinstance(value, bytes):
        return value
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("malformed base64 in 'image'") from None


def request_items(body: "ImageRequest | BatchRequest") -> list[InputItem]:
    """A validated request's images as pipeline input; an image that is not base64 becomes
    that item's error (the batch's other images still run)."""
    entries = body.images if isinstance(body, BatchRequest) else [body]
    items = []
    for index, entry in enumerate(entries):
        name = f"images[{index}]"
        faces = None if entry.boxes is None else [face_of_box(box) for box in entry.boxes]
        try:
            items.append(InputItem(name, name, data=_image_bytes(entry.image), faces=faces))
        except ValueError as exc:
            items.append(InputItem(name, name, error=str(exc)))
    return items


#: Decimals of the answer's pixel coordinates (0.01 px: no detector is finer) and of its
#: probabilities (1e-6): 17 significant digits of float noise say nothing more to a client.
PIXEL_DECIMALS = 2
PROB_DECIMALS = 6


def face_answer(face: FaceResult, labels: LabelSet) -> dict[str, Any]:
    """One face of an answer: the API's ``FaceResult.to_dict()`` rounded for a client
    (:data:`PIXEL_DECIMALS`, :data:`PROB_DECIMALS`), with ``age_range``: the years
    ``[lo, hi)`` of its age class (hi exclusive: ``15-20`` is ``[15, 21]``), for a client
    that needs numbers rather than a class name."""
    out = face.to_dict()
    out["box"] = [round(v, PIXEL_DECIMALS) for v in out["box"]]
    out["score"] = round(out["score"], PROB_DECIMALS)
    if out["landmarks"] is not None:
        out["landmarks"] = [[round(v, PIXEL_DECIMALS) for v in p] for p in out["landmarks"]]
    for task in ("age", "gender"):
        if out[f"{task}_prob"] is not None:
            out[f"{task}_prob"] = round(out[f"{task}_prob"], PROB_DECIMALS)
        out[f"{task}_probs"] = {k: round(v, PROB_DECIMALS) for k, v in out[f"{task}_probs"].items()}
    out["age_range"] = None
    if face.age is not None and face.age in labels.age:
        lo, hi = labels.class_years(labels.age.index(face.age))
        out["age_range"] = [lo, hi]
    return out


def image_answer(result: ImageResult) -> dict[str, Any]:
    """One image's answer: its size, its faces (:func:`face_answer`) and CSV status."""
    if result.error is not None:
        return {"error": result.error, "status": result.status, "faces": [],
                "width": None, "height": None}  # fmt: skip
    width, height = result.size if result.size is not None else (None, None)
    return {
        "status": result.status,
        "width": width,
        "height": height,
        "faces": [face_answer(face, result.labels) for face in result.faces],
    }


class FaceAPI(ls.LitAPI if ls is not None else object):  # type: ignore[misc]
    """One endpoint (``/predict`` or ``/predict/batch``) on the engine's pipeline.

    LitServe builds one in the server process (routes, authorisation) and pickles it into
    each inference worker, where :meth:`setup` loads the detector and the network: only the
    options travel, never a model."""

    def __init__(self, options: PredictOptions, settings: ServeSettings, many: bool) -> None:
        super().__init__(
            max_batch_size=settings.max_batch_size,
            batch_timeout=settings.batch_timeout,
            api_path=BATCH_PATH if many else PREDICT_PATH,
        )
        self.options = options
        self.settings = settings
        self.many = many

    def setup(self, device: str) -> None:
        """Load the model once per worker (``/health`` turns 200 when every worker is done)."""
        configure_torch_threads(self.options.threads, self.options.workers)
        self.agegender = AgeGender(options=self.options)
        self.pipeline = self.agegender.pipeline()

    def decode_request(self, request: QueuedParam) -> Decoded:
        """The body :class:`RequestLimits` validated -> the images to run. Never raises:
        LitServe decodes a whole batch of requests together, and one bad request must not
        fail the others."""
        try:
            items = request_items(request.body)
        except Exception as exc:  # noqa: BLE001 - a request never takes the worker down
            return Decoded(error=f"bad request ({type(exc).__name__})", many=self.many)
        return Decoded(items=items, many=self.many, received=request.received)

    def batch(self, inputs: list[Decoded]) -> list[Decoded]:
        return list(inputs)

    def predict(self, x: Any) -> Any:
        """Every image of the gathered requests through one pipeline run: decoding and
        detection in its loader threads, all faces in shared network batches. The images
        of a request past ``timeout`` (LitServe has answered it 504) are skipped as the
        pipeline reaches them: an abandoned request stops costing work at its next image."""
        requests: list[Decoded] = x if self.max_batch_size > 1 else [x]
        items = [item for request in requests for item in request.items]
        if len(items) == 1 and not requests[0].past(self.settings.timeout):
            results = self.pipeline.run_all(items)
        else:
            results = list(self.pipeline.run(self._in_time(requests)))
        out: list[Decoded | list[ImageResult]] = []
        start = 0
        for request in requests:
            n = len(request.items)
            out.append(request if request.error is not None else results[start : start + n])
            start += n
        return out if self.max_batch_size > 1 else out[0]

    def _in_time(self, requests: list[Decoded]) -> Iterator[InputItem]:
        """The requests' items as the pipeline takes them; one of a request already past
        ``timeout`` is replaced by an error item, which costs no decoding or detection."""
        timeout = self.settings.timeout
        for request in requests:
            for item in request.items:
                if request.past(timeout):
                    reason = f"abandoned: past timeout ({timeout:g} s)"
                    yield InputItem(item.path, item.relpath, error=reason)
                else:
                    yield item

    def unbatch(self, output: list[Any]) -> list[Any]:
        return list(output)

    # No return annotation: LitServe makes it the route's response type.
    def encode_response(self, output: Any):  # noqa: ANN201
        """A request's answer; refused requests and (for /predict) a bad image become a JSON
        error response with its code: raising here would fail every request of the batch."""
        if isinstance(output, Decoded):
            return error_response(output.error or "bad request")
        if self.many:
            return {"images": [image_answer(result) for result in output]}
        result = output[0]
        if result.error is not None:
            return error_response(result.error)
        return image_answer(result)


def key_matches(expected: str | None, given: str | None) -> bool:
    """True without a key set, or when ``given`` equals it (constant-time comparison)."""
    if not expected:
        return True
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


class RequestLimits:
    """ASGI middleware in front of LitServe: the API key is checked, the body read within
    its size and time limits and parsed once into its pydantic model (:mod:`agegender.
    serve_schema`) before a request is queued, so a client gets 401, 408, 413 or 400 with a
    reason and no worker sees a bad body; the route receives the model (:func:`queued_request`)."""

    def __init__(self, app: Any, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        if (
            path not in OPEN_PATHS
            and not path.startswith(DOCS_ASSETS + "/")
            and not key_matches(self.settings.api_key, headers.get("x-api-key"))
        ):
            return await error_response("missing or wrong X-API-Key", 401)(scope, receive, send)
        if scope["method"] != "POST" or path not in (PREDICT_PATH, BATCH_PATH):
            return await self.app(scope, receive, send)
        try:
            data = await self._read_body(headers, _within(receive, self.settings.read_timeout))
        except _Refused as refused:
            if refused.reason is None:  # the client left
                return None
            return await error_response(refused.reason, refused.code)(scope, receive, send)

        def replay() -> Any:
            sent = False

            async def receive_again() -> dict:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": data, "more_body": False}
                return await receive()

            return receive_again

        try:
            body = await self._read_request(scope, headers, data, path == BATCH_PATH, replay())
        except ValueError as exc:
            return await error_response(str(exc))(scope, receive, send)
        scope.setdefault("state", {})[QUEUED_STATE] = Queued(body, time.monotonic())
        return await self.app(scope, replay(), send)

    async def _read_request(
        self, scope: dict, headers: dict[str, str], data: bytes, many: bool, receive: Any
    ) -> "ImageRequest | BatchRequest":
        """The body as its pydantic model, read once: JSON parsed and validated in one pass,
        a form's files and fields turned into the same model. Images and boxes are counted
        before anything is decoded. ValueError: why the request is refused."""
        s = self.settings
        limits = {MAX_BOXES_KEY: s.max_boxes_per_image, MAX_IMAGES_KEY: s.max_batch_images}
        content_type = headers.get("content-type", "")
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            body = await _read_form(scope, receive, many, limits)
        else:
            body = read_json(data, many, limits)
        total = count_boxes(body)
        if total > s.max_boxes_per_request:
            raise ValueError(
                f"too many boxes: {total} in one request (limit max_boxes_per_request="
                f"{s.max_boxes_per_request})"
            )
        return body

    async def _read_body(self, headers: dict[str, str], receive: Any) -> bytes:
        """The whole body, or :class:`_Refused`: over ``max_upload_bytes`` (413, after reading
        the rest without keeping it), not all there within ``read_timeout`` (408: a client
        sending a byte a second cannot hold a connection), a bad Content-Length (400)."""
        limit = self.settings.max_upload_bytes
        too_large = f"too large: request body over {limit} bytes (limit max_upload_bytes)"
        try:
            declared = int(headers.get("content-length", "0"))
        except ValueError:
            raise _Refused("invalid Content-Length", 400) from None
        try:
            if declared > limit:
                raise _Refused(too_large if await _drain(receive) else None, 413)
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Refused(None, 400)
                body += message.get("body", b"")
                if len(body) > limit:
                    raise _Refused(too_large if await _drain(receive) else None, 413)
                if not message.get("more_body", False):
                    return bytes(body)
        except TimeoutError:
            seconds = self.settings.read_timeout
            raise _Refused(
                f"request body not received within {seconds:g} s (limit read_timeout)", 408
            ) from None


class _Refused(AgeGenderError):
    """A request refused before it reaches LitServe: ``reason`` None = the client left."""

    def __init__(self, reason: str | None, code: int) -> None:
        super().__init__(reason)
        self.reason, self.code = reason, code


def _within(receive: Any, seconds: float) -> Any:
    """``receive`` with one deadline for the whole body: TimeoutError once it has passed."""
    deadline = asyncio.get_running_loop().time() + seconds

    async def receive_in_time() -> dict:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise TimeoutError
        return await asyncio.wait_for(receive(), left)

    return receive_in_time


async def _drain(receive: Any) -> bool:
    """Read the rest of a refused body without keeping it (False: the client left).

    Answering 413 while the client is still sending makes the server close a socket with
    unread data: the kernel then resets the connection and the client never reads the 413
    (it sees a broken pipe). Discarding the bytes keeps memory flat; ``read_timeout``
    (``receive`` is :func:`_within`'s) bounds how long a client can keep sending."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        if not message.get("more_body", False):
            return True


async def _read_form(
    scope: dict, receive: Any, many: bool, limits: dict[str, int]
) -> "ImageRequest | BatchRequest":
    """A multipart (or urlencoded) body as the request model: Starlette's form parser (files
    kept in memory: LitServe turns Starlette's spooling to disk off), the files' bytes read."""
    try:
        form = await Request(scope, receive).form()
    except Exception as exc:  # noqa: BLE001 - any parser failure is the client's
        raise ValueError(f"malformed form body ({type(exc).__name__})") from None
    try:
        fields_ = form.getlist("image") if many else [form.get("image")]
        images = [
            await value.read() if isinstance(value, UploadFile) else value
            for value in fields_
            if value is not None
        ]
        boxes = form.get("boxes")
        if isinstance(boxes, UploadFile):
            raise ValueError("'boxes' is a form field of JSON text, not a file")
        return read_form(images, boxes, many, limits)
    finally:
        await form.close()


def describe(agegender: AgeGender, settings: ServeSettings) -> dict[str, Any]:
    """What ``GET /info`` reports: the model, its labels and face spec, where it runs, the
    server's limits and the versions of what serves it."""
    import importlib.metadata as md

    classifier = agegender.classifier
    spec = classifier.face_spec
    versions = {"python": platform.python_version()}
    for package in ("agegender", "litserve", "torch", "onnxruntime", "numpy", "pillow"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    options = agegender.options
    limits = {f.name: getattr(settings, f.name) for f in fields(settings)}
    limits["api_key"] = bool(settings.api_key)  # whether one is required, never its value
    limits["max_pixels"] = options.max_pixels
    return {
        "model": {
            "checkpoint": options.checkpoint or "original Levi-Hassner nets",
            "tasks": list(classifier.tasks),
            "oversample": classifier.oversample,
            "calibrated": classifier.calibrated,
        },
        "labels": {
            "name": classifier.labels.name,
            "classes": agegender.labels,
            # each age class's years [lo, hi), hi exclusive: what a client computes with
            "age_years": {
                name: list(classifier.labels.class_years(i))
                for i, name in enumerate(classifier.labels.age)
            },
        },
        "face_spec": asdict(spec) if is_dataclass(spec) else str(spec),
        "detector": options.detector_name,
        "backend": classifier.backend,
        "precision": classifier.precision,
        "device": str(classifier.device),
        "batch_size": options.batch_size,
        "workers": options.workers,
        "server": limits,
        "versions": versions,
    }


def build_server(options: PredictOptions, settings: ServeSettings, info: dict[str, Any]) -> Any:
    """The LitServer: /predict and /predict/batch (each with its own inference workers),
    the request limits in front, JSON errors, and our /info."""
    device = str(options.device)
    server = ls.LitServer(
        [FaceAPI(options, settings, many=False), FaceAPI(options, settings, many=True)],
        accelerator="cuda" if device.startswith("cuda") else "cpu",
        devices=1,
        workers_per_device=settings.workers_per_device,
        timeout=settings.timeout,
        info_path="/litserve/info",  # /info is ours (the model, not only the server)
        middlewares=[(RequestLimits, {"settings": settings})],
    )

    async def http_error(request: Any, exc: Any) -> "JSONResponse":
        return error_response(str(exc.detail), exc.status_code)

    server.app.add_exception_handler(StarletteHTTPException, http_error)
    document_api(server.app)

    async def info_route() -> dict[str, Any]:
        return info

    server.app.add_api_route("/info", info_route, methods=["GET"], summary="model and server")
    return server


def read_key_file(path: Path) -> str:
    """The API key from the first line of ``path`` (ValueError when missing or empty)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        name = type(exc).__name__
        raise ValueError(f"cannot read the API key file {str(path)!r} ({name})") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise ValueError(f"the API key file {str(path)!r} is empty")
    return key


def stop_on_sigterm() -> None:
    """SIGTERM (systemd, Docker, Kubernetes, ``kill``) stops the server as Ctrl-C does:
    LitServe then terminates its HTTP and inference processes before exiting. Without it
    the main process dies alone and its workers keep the port and their memory."""
    main_pid = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:  # a process forked from here: end as SIGTERM means
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _typed_openapi(app: Any) -> None:
    """``/openapi.json`` with the request bodies (JSON and multipart) and answers of
    ``/predict`` and ``/predict/batch``, so a client generator gets real types."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = default()
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(schemas())
        # the key is checked once, by RequestLimits, for every route but the open ones
        components["securitySchemes"] = {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        }
        errors = {
            str(code): {
                "description": what,
                "content": {"application/json": {"schema": _ref("Error")}},
            }
            for code, what in (
                (400, "bad input"),
                (401, "missing or wrong X-API-Key"),
                (408, "body not received within read_timeout"),
                (413, "over a limit"),
                (504, "past timeout"),
            )
        }
        for path, body, answer, form in (
            (PREDICT_PATH, "ImageRequest", "ImageAnswer", {"image": "binary", "boxes": "string"}),
            (BATCH_PATH, "BatchRequest", "BatchAnswer", {"image": "binary"}),
        ):
            operation = schema["paths"][path]["post"]
            multipart = {
                "type": "object",
                "properties": {k: {"type": "string", "format": f} for k, f in form.items()},
                "required": ["image"],
            }
            if path == BATCH_PATH:
                multipart["properties"]["image"] = {
                    "type": "array",
                    "items": {"type": "string", "format": "binary"},
                }
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": _ref(body)},
                    "multipart/form-data": {"schema": multipart},
                },
            }
            ok = {
                "description": "the faces",
                "content": {"application/json": {"schema": _ref(answer)}},
            }
            operation["responses"] = {"200": ok, **errors}
            operation["summary"] = "one image" if path == PREDICT_PATH else "several images"
            operation["security"] = [{"ApiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def document_api(app: Any) -> None:
    """The API's own documentation: typed ``/openapi.json`` (:func:`_typed_openapi`) and
    ``/docs`` from Swagger UI files the server serves itself (swagger-ui-bundle-v2), not
    from a CDN, so the page works on a machine without internet; LitServe's own
    ``/litserve/info`` route is dropped (``/info`` reports the server and the model)."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    import agegender

    app.title = "agegender prediction server"
    app.version = getattr(agegender, "__version__", "0")
    app.description = "Age and gender of every face in an image (README: Prediction server)."
    _typed_openapi(app)

    dropped = {"/docs", "/litserve/info"}
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in dropped]
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), "docs")

    async def docs() -> Any:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="agegender prediction server",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)


def _parse_value(text: str) -> Any:
    """A serve.yaml value given on the command line, as YAML would read it."""
    import yaml

    return yaml.safe_load(text)


@handled("agegender.serve")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agegender.serve",
        description="REST prediction server (LitServe): POST /predict, /predict/batch.",
    )
    parser.add_argument("--port", type=int, default=None, help="default: conf/serve.yaml (8000)")
    parser.add_argument("--host", default=None, help="default 127.0.0.1; 0.0.0.0 = the network")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"visible to every user in ps: prefer the {API_KEY_ENV} variable or --api-key-file",
    )
    parser.add_argument(
        "--api-key-file", type=Path, default=None, help="a file whose first line is the key"
    )
    parser.add_argument(
        "overrides", nargs="*", help="conf/serve.yaml settings or conf/predict.yaml overrides"
    )
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides are key=value (got {' '.join(bad)})")
    if ls is None:
        print(
            "agegender.serve needs LitServe: pip install -e '.[serve]' (or pip install litserve)",
            file=sys.stderr,
        )
        return 2
    own = {f.name for f in fields(ServeSettings)}
    changes: dict[str, Any] = {}
    predict_overrides = []
    for override in args.overrides:
        key, value = override.split("=", 1)
        if key in own:
            changes[key] = _parse_value(value)
        else:
            predict_overrides.append(override)
    if args.api_key is not None:
        print(
            f"agegender.serve: warning: --api-key is visible to every user of this machine "
            f"(ps, /proc); set {API_KEY_ENV} or use --api-key-file",
            file=sys.stderr,
        )
    for key, value in (("host", args.host), ("port", args.port), ("api_key", args.api_key)):
        if value is not None:
            changes[key] = value
    # the settings, the key file and the checkpoint are the user's to fix (one line, exit 2);
    # the same builtin errors while serving keep their traceback
    with translated(FileNotFoundError, ValueError):
        if args.api_key_file is not None:
            changes["api_key"] = read_key_file(args.api_key_file)
        settings = ServeSettings.load(**changes)
        options = PredictOptions.compose(predict_overrides)  # never downloads
        # built here once: a missing checkpoint is a clear error now, not a dead worker later
        agegender = AgeGender(options=options)
    info = describe(agegender, settings)
    del agegender
    server = build_server(options, settings, info)
    stop_on_sigterm()
    print(
        f"agegender.serve: {info['detector']} + {info['backend']} on "
        f"http://{settings.host}:{settings.port} (docs: /docs)",
        flush=True,
    )
    server.run(
        host=settings.host,
        port=settings.port,
        num_api_servers=settings.api_servers,
        log_level=settings.log_level,
        generate_client_file=False,  # nothing written to disk (LitServe writes client.py)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
