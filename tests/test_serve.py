"""The prediction server (python -m agegender.serve) end to end, on a loopback port.

One server process for the module: good requests (multipart, base64 JSON, caller boxes, a
batch) must equal ``AgeGender().predict`` on the same photos; bad ones (not an image,
truncated, empty, oversized, too many pixels, unauthorised, malformed JSON and base64) get
a JSON error with the CSV's reason and the right code; concurrent requests all get their
own answers; and the server still answers after every bad request.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from agegender.labels import ADIENCE8
from tests.conftest import REPO, SAMPLES, WEIGHTS_HINT, require

pytest.importorskip("litserve")

KEY = "test-key-24"
PHOTOS = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".png"))
MAX_UPLOAD = 2_000_000
MAX_PIXELS = 4_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(
    url: str, body: bytes | None = None, content_type: str | None = None, key: str | None = KEY
) -> tuple[int, Any]:
    """(status, decoded JSON or text) of one request."""
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if key:
        headers["X-API-Key"] = key
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def multipart(data: bytes, name: str = "photo.jpg") -> tuple[bytes, str]:
    """A multipart/form-data body with the file field ``image``."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def as_json(payload: Any) -> tuple[bytes, str]:
    return json.dumps(payload).encode(), "application/json"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def agegender():
    from agegender import AgeGender
    from agegender.store import WeightsNotFoundError

    try:
        return AgeGender(max_pixels=MAX_PIXELS)
    except WeightsNotFoundError as error:
        require(False, f"original weights not cached: {WEIGHTS_HINT} ({error})")


#: The module server's limits (conf/serve.yaml's, made small enough to reach in a test).
MAX_BOXES, MAX_REQUEST_BOXES, READ_TIMEOUT = 5, 8, 3


def start_server(cwd: Path, *settings: str) -> tuple[subprocess.Popen, str]:
    """A server process on a free loopback port in its own process group, once healthy."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "AGEGENDER_API_KEY": KEY}
    command = [sys.executable, "-m", "agegender.serve", "--port", str(port), *settings]
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace")  # type: ignore[union-attr]
            pytest.fail(f"server exited with {process.returncode}:\n{output[-3000:]}")
        try:
            status, _ = call(f"{base}/health", key=None)
            if status == 200:
                return process, base
        except OSError:
            pass
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("server not healthy within 120 s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def server(agegender, tmp_path_factory) -> Any:
    """Base URL of a server on a free loopback port (batching on, an API key), stopped after."""
    cwd = tmp_path_factory.mktemp("serve-cwd")  # nothing may be written there
    process, base = start_server(
        cwd, f"max_upload_bytes={MAX_UPLOAD}", "max_batch_images=4", "max_batch_size=8",
        "batch_timeout=0.05", f"max_pixels={MAX_PIXELS}", f"max_boxes_per_image={MAX_BOXES}",
        f"max_boxes_per_request={MAX_REQUEST_BOXES}", f"read_timeout={READ_TIMEOUT}",
    )  # fmt: skip
    try:
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        assert list(cwd.iterdir()) == [], "the server wrote files"


def assert_rounded(values: list, decimals: int) -> None:
    """Each number has at most ``decimals`` decimals (not 17 digits of float noise)."""
    for value in values:
        assert float(value) == round(float(value), decimals), value


def assert_same(answer: dict, faces: list, size: tuple[int, int] | None = None) -> None:
    """Server faces == the API's: boxes (to their 0.01 px rounding), labels and every
    probability to 1e-4; the image's size; each age class's years."""
    assert answer["status"] == ("ok" if faces else "no_face")
    if size is not None:
        assert (answer["width"], answer["height"]) == size
    got = answer["faces"]
    assert len(got) == len(faces)
    for mine, theirs in zip(got, (f.to_dict() for f in faces), strict=True):
        assert mine["age"] == theirs["age"] and mine["gender"] == theirs["gender"]
        np.testing.assert_allclose(mine["box"], theirs["box"], atol=0.0051)
        assert_rounded(mine["box"], 2)
        if mine["landmarks"] is not None:
            assert len(mine["landmarks"]) == 5
            assert_rounded([v for p in mine["landmarks"] for v in p], 2)
        assert_rounded(list(mine["age_probs"].values()) + [mine["gender_prob"]], 6)
        assert mine["age_range"] == list(ADIENCE8.class_years(ADIENCE8.age.index(mine["age"])))
        for task in ("age_probs", "gender_probs"):
            assert list(mine[task]) == list(theirs[task])
            np.testing.assert_allclose(
                list(mine[task].values()), list(theirs[task].values()), atol=1e-4
            )


def test_health_info_and_docs(server, agegender) -> None:
    status, info = call(f"{server}/info")
    assert status == 200
    assert info["labels"]["classes"] == {k: list(v) for k, v in agegender.labels.items()}
    assert info["labels"]["age_years"]["15-20"] == [15, 21]  # [lo, hi): hi exclusive
    assert list(info["labels"]["age_years"]) == list(agegender.labels["age"])
    assert info["backend"] == agegender.backend
    assert info["face_spec"]["crop_size"] == agegender.classifier.face_spec.crop_size
    assert info["server"]["api_key"] is True and KEY not in json.dumps(info)
    assert info["versions"]["litserve"]
    assert call(f"{server}/docs", key=None)[0] == 200
    assert call(f"{server}/health", key=None)[0] == 200
    # LitServe's own info route is not exposed: /info is the server's and the model's
    assert call(f"{server}/litserve/info")[0] == 404


def test_openapi_documents_typed_bodies(server) -> None:
    """/openapi.json gives the request bodies (JSON and multipart) and answers their types, so
    a client generator works; every $ref resolves."""
    status, spec = call(f"{server}/openapi.json", key=None)
    assert status == 200 and spec["info"]["title"] == "agegender prediction server"
    schemas = spec["components"]["schemas"]
    for path, body, answer in (
        ("/predict", "ImageRequest", "ImageAnswer"),
        ("/predict/batch", "BatchRequest", "BatchAnswer"),
    ):
        post = spec["paths"][path]["post"]
        content = post["requestBody"]["content"]
        assert content["application/json"]["schema"]["$ref"].endswith(f"/{body}")
        assert "image" in content["multipart/form-data"]["schema"]["properties"]
        ok = post["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok["$ref"].endswith(f"/{answer}")
        assert {"400", "401", "408", "413"} <= set(post["responses"])
    assert schemas["ImageRequest"]["required"] == ["image"]
    face = schemas["Face"]["properties"]
    order = "left eye, right eye, nose, mouth left, mouth right"
    assert order in face["landmarks"]["description"]
    assert "[lo, hi)" in face["age_range"]["description"]
    assert {"width", "height"} <= set(schemas["ImageAnswer"]["properties"])
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(spec))
    assert refs and set(refs) <= set(schemas)


def test_docs_page_works_offline(server) -> None:
    """/docs loads Swagger UI from the server itself, never a CDN: the page renders in a
    browser that can resolve no host but the loopback one."""
    status, page = call(f"{server}/docs", key=None)
    assert status == 200 and "cdn.jsdelivr" not in page and "tiangolo" not in page
    assert "/docs/assets/swagger-ui-bundle.js" in page
    request = urllib.request.Request(f"{server}/docs/assets/swagger-ui-bundle.js")
    with urllib.request.urlopen(request, timeout=30) as response:  # open, like the page
        assert response.status == 200 and len(response.read()) > 100_000
    try:
        from selenium import webdriver
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError as error:
        require(False, f"the browser check needs selenium (pip install -e '.[dev]'): {error}")
    from tests.test_app import _browser

    chromium, driver_path = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--disable-background-networking"):  # fmt: skip
        options.add_argument(arg)
    browser = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
    try:
        browser.get(f"{server}/docs")
        WebDriverWait(browser, 60).until(
            lambda b: "/predict/batch" in b.find_element(By.TAG_NAME, "body").text
        )
        assert browser.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title")
    finally:
        browser.quit()


def test_predict_equals_the_api(server, agegender) -> None:
    for photo in PHOTOS:
        data = photo.read_bytes()
        expected = agegender.predict(photo)
        assert expected, f"{photo.name}: the sample should have a face"
        size = Image.open(photo).size
        status, answer = call(f"{server}/predict", *multipart(data, photo.name))
        assert status == 200, answer
        assert_same(answer, expected, size)
        status, answer = call(f"{server}/predict", *as_json({"image": b64(data)}))
        assert status == 200, answer
        assert_same(answer, expected, size)


def test_boxes_and_batch(server, agegender) -> None:
    photo = PHOTOS[0]
    box = [10, 20, 200, 230]
    status, answer = call(
        f"{server}/predict", *as_json({"image": b64(photo.read_bytes()), "boxes": [box]})
    )
    assert status == 200, answer
    assert_same(answer, agegender.predict(photo, boxes=[box]))
    body = {"images": [{"image": b64(p.read_bytes())} for p in PHOTOS[:3]]}
    body["images"].append({"image": b64(b"not an image at all")})
    status, answer = call(f"{server}/predict/batch", *as_json(body))
    assert status == 200, answer
    for got, photo in zip(answer["images"][:3], PHOTOS[:3], strict=True):
        assert_same(got, agegender.predict(photo))
    assert answer["images"][3]["error"] == "not an image"
    assert answer["images"][3]["width"] is None and answer["images"][3]["height"] is None
    assert answer["images"][3]["status"] == "error: not an image"


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_bad_requests_and_the_server_keeps_answering(server, agegender) -> None:
    good = PHOTOS[0].read_bytes()
    expected = agegender.predict(PHOTOS[0])
    truncated = good[: len(good) // 3]
    cases = [
        (multipart(b"plain text, not a photo"), 400, "not an image"),
        (multipart(truncated), 400, "truncated image"),
        (multipart(b""), 400, "empty file"),
        (as_json({"image": b64(b"")}), 400, "empty file"),
        (as_json({"image": "%%% not base64 %%%"}), 400, "malformed base64"),
        (as_json({"picture": b64(good)}), 400, "no 'image'"),
        (as_json({"image": b64(good), "boxes": [[1, 2]]}), 400, "bad 'boxes[0]'"),
        (as_json({"image": b64(good), "boxes": [[0, 0, 5, 5]]}), 200, None),
        ((b'{"image": ', "application/json"), 400, "malformed JSON"),
        ((b"[1, 2]", "application/json"), 400, "expected a JSON object"),
        ((b"", "application/json"), 400, "empty body"),
        (multipart(b"x" * (MAX_UPLOAD + 10)), 413, "too large: request body"),
        (multipart(_png(2500, 2000)), 413, "too large: 2500x2000"),
        (as_json({"images": [{"image": b64(good)}] * 5}), 413, "too many images"),
        # boxes: numbers only, never text read digit by digit, finite and of pixel size
        (as_json({"image": b64(good), "boxes": ["1234"]}), 400, "bad 'boxes[0]'"),
        (
            as_json({"image": b64(good), "boxes": [["100", "50", "400", "300"]]}),
            400,
            "four numbers",
        ),
        (as_json({"image": b64(good), "boxes": [[0, 0, 1e308, 1e308]]}), 400, "finite and within"),
        (as_json({"image": b64(good), "boxes": [[0, 0, True, 5]]}), 400, "four numbers"),
        # bounded work: boxes per image and per request are counted before any is read
        (
            as_json({"image": b64(good), "boxes": [[0, 0, 5, 5]] * (MAX_BOXES + 1)}),
            413,
            "too many boxes: 6 in one image (limit max_boxes_per_image=5)",
        ),
        (as_json({"image": b64(good), "boxes": [[0, 0, 5, 5]] * 5000}), 413, "too many boxes"),
        (
            as_json({"images": [{"image": b64(good), "boxes": [[0, 0, 5, 5]] * 3}] * 3}),
            413,
            "too many boxes: 9 in one request (limit max_boxes_per_request=8)",
        ),
        # JSON nested far deeper than the parser's recursion limit
        ((b"[" * 100_000 + b"]" * 100_000, "application/json"), 400, "nested too deeply"),
        # the field is named as a client writes it, in batches too
        (as_json({"image": 5}), 400, "bad 'image'"),
        (
            as_json({"images": [{"image": b64(good)}, {"image": b64(good), "boxes": [[1]]}]}),
            400,
            "bad 'images[1].boxes[0]'",
        ),
        (
            as_json({"images": [{"image": b64(good)}, {"boxes": None}]}),
            400,
            "no 'image' in images[1]",
        ),
        (as_json({"images": []}), 400, "bad 'images'"),
    ]
    for (body, content_type), code, reason in cases:
        path = "/predict/batch" if b'"images"' in body[:20] else "/predict"
        status, answer = call(f"{server}{path}", body, content_type)
        assert status == code, (reason, answer)
        if reason is not None:
            assert isinstance(answer, dict) and reason in answer["error"], answer
        status, answer = call(f"{server}/predict", *multipart(good))
        assert status == 200, answer
        assert_same(answer, expected)


def test_api_key(server) -> None:
    body, content_type = multipart(PHOTOS[0].read_bytes())
    for key in (None, "wrong"):
        status, answer = call(f"{server}/predict", body, content_type, key=key)
        assert status == 401 and "X-API-Key" in answer["error"]
        assert call(f"{server}/info", key=key)[0] == 401
    assert call(f"{server}/predict", body, content_type)[0] == 200


def test_concurrent_requests_each_get_their_own_answer(server, agegender) -> None:
    photos = [PHOTOS[i % len(PHOTOS)] for i in range(24)]
    expected = {p: agegender.predict(p) for p in set(photos)}
    bad = b"not an image"

    def send(i: int) -> tuple[int, Any, Path | None]:
        if i % 6 == 5:  # bad requests mixed into the same batches
            return (*call(f"{server}/predict", *multipart(bad)), None)
        photo = photos[i]
        return (*call(f"{server}/predict", *multipart(photo.read_bytes())), photo)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, range(len(photos))))
    for status, answer, photo in answers:
        if photo is None:
            assert status == 400 and answer["error"] == "not an image"
        else:
            assert status == 200, answer
            assert_same(answer, expected[photo])


def test_slow_upload_is_cut_off_after_the_read_timeout(server) -> None:
    """A client that announces 1000 bytes and sends one a second gets 408 and a closed
    connection after read_timeout (3 s here), not a connection held open."""
    port = int(server.rsplit(":", 1)[1])
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = (
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        sock.sendall(head.encode())
        sock.settimeout(1.0)
        answer = b""
        while time.monotonic() - started < 20:
            try:
                sock.sendall(b" ")
            except OSError:  # the server closed the connection
                break
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        elapsed = time.monotonic() - started
    assert elapsed < READ_TIMEOUT + 5, elapsed
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"read_timeout" in answer
    status, _ = call(f"{server}/health", key=None)
    assert status == 200


def test_form_boxes_are_read_like_json_boxes(server, agegender) -> None:
    """A multipart form's ``boxes`` field (JSON text) goes through the same model: the
    same answer as JSON boxes, the same refusals."""
    photo = PHOTOS[0]
    box = [10.0, 10.0, 120.0, 140.0]
    boundary = uuid.uuid4().hex

    def form(boxes: str) -> tuple[bytes, str]:
        body, _ = multipart(photo.read_bytes())
        field = f'--{boundary}\r\nContent-Disposition: form-data; name="boxes"\r\n\r\n{boxes}\r\n'
        first = body.split(b"\r\n", 1)[0].decode()[2:]  # multipart()'s own boundary
        body = body.replace(first.encode(), boundary.encode())
        return field.encode() + body, f"multipart/form-data; boundary={boundary}"

    status, answer = call(f"{server}/predict", *form(json.dumps([box])))
    assert status == 200, answer
    assert_same(answer, agegender.predict(photo, boxes=[box]))
    for boxes, code, reason in (
        ("[[1, 2]]", 400, "bad 'boxes[0]'"),
        ("[[", 400, "'boxes' is not valid JSON"),
        ("[" * 5000 + "]" * 5000, 400, "'boxes' is not valid JSON"),
        (json.dumps([box] * (MAX_BOXES + 1)), 413, "too many boxes"),
    ):
        status, answer = call(f"{server}/predict", *form(boxes))
        assert status == code and reason in answer["error"], (boxes[:20], answer)


def test_the_body_is_read_once_into_the_documented_model() -> None:
    """RequestLimits parses a body once into the pydantic model /openapi.json documents and
    hands it to the route; the route's argument is that model (a FastAPI dependency), so
    neither FastAPI nor LitServe reads or parses the body again."""
    import asyncio
    import inspect
    import typing

    from agegender import serve
    from agegender.serve_schema import BatchRequest, ImageRequest

    annotation = inspect.signature(serve.FaceAPI.decode_request).parameters["request"].annotation
    assert typing.get_origin(annotation) is typing.Annotated
    queued, depends = typing.get_args(annotation)
    assert queued is serve.Queued and depends.dependency is serve.queued_request

    settings = serve.ServeSettings.load(
        api_key=None, max_boxes_per_image=2, max_boxes_per_request=3, max_batch_images=2
    )
    seen: list[Any] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append(scope["state"][serve.QUEUED_STATE].body)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = serve.RequestLimits(app, settings)

    def post(path: str, body: bytes, content_type: str = "application/json") -> int:
        chunks = [body[:7], body[7:]]
        sent: list[dict] = []

        async def receive() -> dict:
            chunk = chunks.pop(0) if chunks else b""
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http", "method": "POST", "path": path, "state": {},
            "headers": [(b"content-type", content_type.encode())],
        }  # fmt: skip
        asyncio.run(middleware(scope, receive, send))
        return sent[0]["status"]

    image = b64(b"not decoded here")
    assert post("/predict", json.dumps({"image": image, "boxes": [[0, 0, 5, 5]]}).encode()) == 204
    assert isinstance(seen[-1], ImageRequest) and seen[-1].boxes == [(0.0, 0.0, 5.0, 5.0)]
    batch = {"images": [{"image": image, "boxes": [[0, 0, 5, 5]] * 2}] * 2}
    assert post("/predict/batch", json.dumps(batch).encode()) == 413  # 4 boxes > 3
    batch["images"] = batch["images"][:1]
    assert post("/predict/batch", json.dumps(batch).encode()) == 204
    assert isinstance(seen[-1], BatchRequest) and len(seen) == 2

    # a form gives the same model
    photo = os.urandom(1_500_000)
    assert post("/predict", *multipart(photo)) == 204
    assert isinstance(seen[-1], ImageRequest) and seen[-1].image == photo


def test_a_request_past_timeout_is_abandoned_at_its_next_image(monkeypatch) -> None:
    """LitServe answers 504 once ``timeout`` passes but cannot stop a running predict: the
    worker skips a late request's remaining images (no decoding, no detection) as the
    pipeline reaches them, while a request still in time runs in full."""
    from agegender import serve
    from agegender.inference.inputs import InputItem
    from agegender.inference.options import PredictOptions
    from agegender.inference.results import ImageResult

    clock = [1000.0]
    monkeypatch.setattr(serve.time, "monotonic", lambda: clock[0])
    settings = serve.ServeSettings.load(timeout=10, max_batch_size=4)
    api = serve.FaceAPI(PredictOptions.compose([]), settings, many=True)
    worked: list[str] = []

    class Pipeline:  # records which items would be decoded and detected
        def run(self, items: Any) -> Any:
            for item in items:
                if item.error is None:
                    worked.append(item.path)
                    clock[0] += 2.0  # each image takes 2 s
                yield ImageResult(item, error=item.error)

        def run_all(self, items: list) -> list:
            return list(self.run(items))

    api.pipeline = Pipeline()

    def request(tag: str, n: int, age: float) -> serve.Decoded:
        items = [InputItem(f"{tag}{i}", f"{tag}{i}") for i in range(n)]
        return serve.Decoded(items=items, many=True, received=clock[0] - age)

    late, fresh = request("late", 3, 9.0), request("fresh", 2, 0.0)
    out = api.predict([late, fresh])
    # late is 9 s old: its first image runs (ending at 11 s), the other two are skipped
    assert worked == ["late0", "fresh0", "fresh1"]
    abandoned = "abandoned: past timeout (10 s)"
    assert [r.error for r in out[0]] == [None, abandoned, abandoned]
    assert [r.error for r in out[1]] == [None, None]


def test_boxes_are_numbers_in_the_api_too() -> None:
    from agegender.api import face_of_box

    for bad in ("1234", ["1", "2", "3", "4"], [0, 0, 1e308, 1e308], [0, 0, True, 5], [1, 2]):
        with pytest.raises(ValueError, match="box"):
            face_of_box(bad)
    assert face_of_box(np.array([1.0, 2.0, 30.0, 40.0])).box == (1.0, 2.0, 30.0, 40.0)


def test_api_key_flag_warns_and_the_key_file_is_read(tmp_path, capsys) -> None:
    from agegender.serve import main, read_key_file

    assert main(["--api-key", "s3cret-flag", "max_batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert "--api-key is visible to every user" in err and "AGEGENDER_API_KEY" in err
    assert "s3cret-flag" not in err
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-file\n")
    assert read_key_file(key_file) == "s3cret-file"
    (tmp_path / "empty").write_text("\n")
    for path in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ValueError, match="API key file"):
            read_key_file(path)
    assert main(["--api-key-file", str(tmp_path / "missing")]) == 2
    assert "s3cret" not in capsys.readouterr().err


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow  # a server of its own: ~20 s
def test_sigterm_stops_every_process_and_closes_the_port(agegender, tmp_path) -> None:
    """`kill <pid>` (what systemd, Docker and Kubernetes send): the server process and every
    worker it started end, and the port is closed, within seconds."""
    process, base = start_server(tmp_path)
    port = int(base.rsplit(":", 1)[1])
    os.kill(process.pid, signal.SIGTERM)  # the main process only, not its group
    try:
        process.wait(timeout=30)
        deadline = time.monotonic() + 15
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(process.pid), "worker processes outlived the server"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)


def _group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in a process group (the server and its workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # the fields after "pid (comm)": state ppid pgrp ...
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue  # a process that ended while being read
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def _slow_upload(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"POST /predict HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n".encode()
        )
        sock.settimeout(1.0)
        for _ in range(30):
            try:
                sock.sendall(b" ")
                if not sock.recv(4096):
                    return
            except TimeoutError:
                continue
            except OSError:
                return


@pytest.mark.slow  # a server of its own under load for ~25 s
def test_load_and_abuse_keep_answers_latency_and_memory(agegender, tmp_path) -> None:
    """Six clients send ordinary requests for 12 s while others send 5,000 boxes, a slow
    upload and deeply nested JSON: every ordinary request gets its usual answer, p99 latency
    stays under 15 s (2 cores shared by clients and server), the abusive requests get their
    4xx, the server's memory after the run is within 300 MB of before it, and SIGTERM then
    leaves no process and a closed port."""
    process, base = start_server(tmp_path, "read_timeout=3", "timeout=60")
    port = int(base.rsplit(":", 1)[1])
    photo = PHOTOS[-1]
    good = multipart(photo.read_bytes())
    expected = agegender.predict(photo)
    try:
        for _ in range(3):  # warm: the first requests load lazily
            assert call(f"{base}/predict", *good)[0] == 200
        before = _group_rss_mb(process.pid)
        deadline = time.monotonic() + 12
        latencies: list[float] = []
        abuse: list[int] = []

        def ordinary() -> None:
            while time.monotonic() < deadline:
                started = time.monotonic()
                status, answer = call(f"{base}/predict", *good)
                latencies.append(time.monotonic() - started)
                assert status == 200, answer
                assert_same(answer, expected)

        boxes = as_json({"image": b64(photo.read_bytes()), "boxes": [[0, 0, 50, 50]] * 5000})
        deep = (b"[" * 100_000 + b"]" * 100_000, "application/json")

        def abusive() -> None:
            while time.monotonic() < deadline:
                abuse.append(call(f"{base}/predict", *boxes)[0])
                abuse.append(call(f"{base}/predict", *deep)[0])

        with ThreadPoolExecutor(9) as pool:
            futures = [pool.submit(ordinary) for _ in range(6)]
            futures += [pool.submit(abusive), pool.submit(_slow_upload, port)]
            futures += [pool.submit(_slow_upload, port)]
            for future in futures:
                future.result()
        assert len(latencies) >= 12 and set(abuse) == {400, 413}
        p99 = float(np.percentile(latencies, 99))
        assert p99 < 15, p99
        after = _group_rss_mb(process.pid)
        assert after < before + 300, (before, after)
    finally:
        os.kill(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        deadline = time.monotonic() + 15
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = _group_alive(process.pid)
        if alive:
            os.killpg(process.pid, signal.SIGKILL)
    assert not alive, "processes outlived SIGTERM"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_answer_is_rounded_and_says_the_image_size_and_age_years() -> None:
    """A face's answer as a client reads it: 0.01 px coordinates and 1e-6 probabilities
    (not 17 significant digits), the image's width and height, the age class's years."""
    from agegender.inference.inputs import InputItem
    from agegender.inference.results import FaceResult, ImageResult
    from agegender.serve import image_answer

    face = FaceResult(
        box=(10.123456789012345, 20.987654321098765, 110.5, 130.0049999),
        score=0.99987654321,
        landmarks=[(30.111111, 50.999999)] * 5,
        age="25-32", age_prob=0.61234567891, gender="female", gender_prob=0.97000000001,
        age_probs={"25-32": 0.61234567891}, gender_probs={"female": 0.97000000001},
    )  # fmt: skip
    answer = image_answer(ImageResult(InputItem("a", "a"), faces=[face], size=(640, 480)))
    assert (answer["width"], answer["height"], answer["status"]) == (640, 480, "ok")
    got = answer["faces"][0]
    assert got["box"] == [10.12, 20.99, 110.5, 130.0]
    assert got["landmarks"][0] == [30.11, 51.0]
    assert got["age_prob"] == 0.612346 and got["gender_probs"] == {"female": 0.97}
    assert got["score"] == 0.999877 and got["age_range"] == [25.0, 33.0]
    face.age, face.abstained = None, ("age",)
    assert (
        image_answer(ImageResult(InputItem("a", "a"), faces=[face]))["faces"][0]["age_range"]
        is None
    )
    # the Python API keeps full precision (rounding is the server's answer only)
    assert face.to_dict()["box"][0] == 10.123456789012345
