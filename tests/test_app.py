"""The web demo (python -m agegender.app): its seams against predict.py (photos; the audience
of a video), and the page end to end in a real headless Chromium on 127.0.0.1 (upload a
sample photo, read the labels off the page, download the CSV; upload a generated clip with a
known audience and read its counts off the Audience tab)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, SAMPLES, require
from video_fixtures import MJPEGServer, zoom_frames

from agegender.inference import COLUMNS, PROB_COLUMNS, predict
from agegender.inference.annotate import FONT, font_for

#: Set to a path to keep the browser's screenshot (docs/app_screenshot.png is made this way).
SCREENSHOT_ENV = "AGEGENDER_APP_SCREENSHOT"


@pytest.fixture(scope="module")
def agegender(original_classifier):  # noqa: ANN201 - AgeGender (imported lazily)
    """The demo's API object with the original weights (cached: original_classifier
    skips or, under CI, fails without them)."""
    from agegender.api import AgeGender

    return AgeGender(download=False)


def test_analyse_gives_predict_py_rows(tmp_path, agegender) -> None:
    from agegender.app import GALLERY_SIDE, analyse

    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    result = analyse(agegender, [SAMPLES / "biden.jpg", SAMPLES / "obama.jpg", bad])
    rows = pd.read_csv(pd.io.common.StringIO(result.csv_text), keep_default_na=False, dtype=str)
    assert tuple(rows.columns) == COLUMNS + PROB_COLUMNS
    assert list(rows["path"]) == ["biden.jpg", "obama.jpg", "notes.jpg"]
    assert list(rows["status"]) == ["ok", "ok", "error: not an image"]
    # the same faces, labels and probabilities predict.py writes for these files
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("biden.jpg", "obama.jpg"):
        shutil.copy(SAMPLES / name, folder / name)
    shutil.copy(bad, folder / "notes.jpg")
    predict(folder, tmp_path / "out", agegender.detector, agegender.classifier,
            save_probs=True, annotate=False, progress=False)  # fmt: skip
    expected = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False, dtype=str)
    expected["path"] = expected["path"].map(lambda p: Path(p).name)
    expected = expected.set_index("path").loc[list(rows["path"])].reset_index()  # folder order
    pd.testing.assert_frame_equal(rows, expected)
    # the table and the pictures: one per face, one annotated image per decoded photo
    assert [r[0] for r in result.table] == ["biden.jpg", "obama.jpg", "notes.jpg"]
    assert result.table[0][2:6] == ["male", "1.00", "60-100", f"{float(rows['age_prob'][0]):.2f}"]
    assert [caption for _, caption in result.gallery] == ["biden.jpg: 1 face", "obama.jpg: 1 face"]
    image, _ = result.gallery[0]
    assert image.dtype == np.uint8 and image.ndim == 3 and result.faces == 2
    assert max(image.shape[:2]) == GALLERY_SIDE  # labels drawn at the size the page shows
    assert result.table[2][3] == ""  # no probability for a file that is not an image


def test_gallery_labels_have_one_size_whatever_the_photo_size() -> None:
    """A big and a small photo give the page pictures of one size, labelled at that size:
    the label of a 4000 px photo no longer shrinks to a few pixels in the gallery."""
    from agegender.app import GALLERY_SIDE, gallery_image
    from agegender.inference.inputs import InputItem
    from agegender.inference.results import FaceResult, ImageResult

    for side in (400, 4000):
        rgb = np.full((side * 3 // 4, side, 3), 90, np.uint8)
        box = (side * 0.3, side * 0.2, side * 0.6, side * 0.6)
        face = FaceResult(box=box, score=1.0, gender="male", gender_prob=0.97, age="25-32",
                          age_prob=0.61)  # fmt: skip
        shown = gallery_image(ImageResult(InputItem("a", "a"), faces=[face], image=rgb))
        assert shown.shape[:2] == (GALLERY_SIDE * 3 // 4, GALLERY_SIDE)
        # the label's blue fill (RGB) spans the same rows at both sizes
        blue = np.all(np.abs(shown.astype(int) - (30, 140, 230)) <= 2, axis=2)
        rows = np.flatnonzero(blue.sum(axis=1) > 100)
        assert 25 <= len(rows) <= 40, len(rows)


def test_a_file_in_the_wrong_field_is_named_with_what_to_do() -> None:
    from agegender.app import wrong_kind

    assert wrong_kind(["a.jpg", "b.png"], "photo") is None
    assert wrong_kind(["a.jpg", "shop.MP4"], "photo") == (
        "shop.MP4 is a video: to count the people in it, use the Audience tab. "
        "This field takes photos."
    )
    assert wrong_kind(["shop.mp4"], "video") is None
    assert "use the Photos tab" in wrong_kind(["/tmp/x/obama.jpg"], "video")


def test_analyse_webcam_snapshot(agegender) -> None:
    from agegender.app import analyse
    from agegender.images import load_image

    snapshot = load_image(SAMPLES / "obama.jpg")
    result = analyse(agegender, [], snapshot)
    assert [r[0] for r in result.table] == ["webcam.png"] and result.faces == 1
    assert analyse(agegender).table == []


#: The generated clip's audience: two people, one after the other, 2 s each with 2 s of
#: nobody between them (longer than video.lost_seconds: two tracks), at 10 fps.
AUDIENCE_PEOPLE = 2
AUDIENCE_WINDOWS = [1, 0, 1]  # people per 2 s window


def _audience_clip(path: Path) -> Path:
    """A short clip with a known audience (the way tests/test_audience.py makes them)."""
    from agegender.data.demo import write_video

    first = zoom_frames("biden.jpg", 20)
    second = zoom_frames("obama.jpg", 20)
    nobody = [np.full_like(first[0], 40)] * 20
    return write_video(path, first + nobody + second, fps=10)


def test_watch_audience_counts_the_clip_with_the_engine(tmp_path, agegender) -> None:
    """The Audience tab's seam: predict.py's job loop (audience.window, privacy) with a view
    per window written and a last one with audience.json's totals, the chart and the files;
    privacy leaves only the aggregates in the output."""
    from agegender.app import AUDIENCE_COLUMNS, watch_audience

    clip = _audience_clip(tmp_path / "in" / "shop.mp4")
    out = tmp_path / "run" / "audience"
    views = list(watch_audience(agegender, str(clip), out, 2.0, privacy=True, video_stride=2))
    running, last = views[:-1], views[-1]
    assert [len(v.table) for v in running] == [1, 2, 3] and not any(v.done for v in running)
    assert running[0].totals.startswith("**1 people so far** in 1 window of 2 s")
    assert all(v.chart is not None and v.chart.is_file() for v in running)
    assert last.done and last.data is not None
    assert [row[2] for row in last.table] == AUDIENCE_WINDOWS
    assert [row[3] for row in last.table] == [1, 0, 1]  # new people
    assert [row[:2] for row in last.table] == [[0.0, 2.0], [2.0, 4.0], [4.0, 6.0]]
    assert len(last.table[0]) == len(AUDIENCE_COLUMNS) and "_" in last.table[0][4]
    assert last.data["totals"]["people"] == AUDIENCE_PEOPLE
    assert last.totals.startswith(f"**{AUDIENCE_PEOPLE} people** in 3 windows of 2 s")
    assert "Privacy mode" in last.totals
    # in plain words: no setting names, no file names of the engine
    assert "audience." not in last.totals and "conf/" not in last.totals
    assert "were seen too briefly" in last.totals
    assert last.chart == out / "audience.png"
    assert [Path(f).name for f in last.files] == ["audience.csv", "audience.json"]
    assert sorted(p.name for p in out.iterdir()) == ["audience.csv", "audience.json",
                                                     "audience.png"]  # fmt: skip
    # privacy off: the per-face files too; a photo is no audience (the engine's refusal)
    last = list(watch_audience(agegender, str(clip), tmp_path / "b", 2.0, False, video_stride=2))
    assert [Path(f).name for f in last[-1].files] == [
        "audience.csv", "audience.json", "predictions.csv", "tracks.csv",
    ]  # fmt: skip
    assert "Privacy" not in last[-1].totals
    from agegender.inference.options import OptionError

    with pytest.raises(OptionError, match="no video"):
        list(watch_audience(agegender, str(SAMPLES / "obama.jpg"), tmp_path / "c", 2.0))


def _browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    require(
        bool(chromium and driver),
        "Chromium and its driver are not installed (Debian: apt-get install chromium "
        "chromium-driver; .ci/run installs them)",
    )
    return chromium, driver  # type: ignore[return-value]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_page(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the app exited with {server.returncode}:\n{server.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the app did not serve {url} within {timeout} s")


@contextlib.contextmanager
def _page(*overrides: str) -> Iterator[tuple[Any, Any]]:
    """The app served on a free port of 127.0.0.1 (``overrides``: its conf/predict.yaml
    key=value arguments) and a headless Chromium on its page: (browser, WebDriverWait)."""
    try:
        import gradio  # noqa: F401
        from selenium import webdriver
    except ImportError as error:
        require(
            False, f"the browser test needs gradio and selenium (pip install -e '.[dev]'): {error}"
        )
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = _browser()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "agegender.app", "--port", str(port), *overrides],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,1100", "--disable-gpu"):  # fmt: skip
        options.add_argument(arg)
    browser = None
    try:
        _wait_for_page(url, server)
        browser = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
        browser.get(url)
        yield browser, WebDriverWait(browser, 90)
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.mark.slow  # ~17 s: a server process
def test_stopping_the_demo_removes_its_private_folder(tmp_path, original_classifier) -> None:
    """SIGTERM (how services and this file's browser tests stop the demo) must remove the
    folder of uploaded photos, as Ctrl-C does: uploads of people are not left behind."""
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "TMPDIR": str(tmp_path)}
    server = subprocess.Popen(
        [sys.executable, "-m", "agegender.app", "--port", str(port), "detector=none"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _wait_for_page(f"http://127.0.0.1:{port}/", server)
        assert len(list(tmp_path.glob("agegender-app-*"))) == 1  # the folder exists while up
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert list(tmp_path.glob("agegender-app-*")) == []


@pytest.mark.slow  # ~24 s: a browser
def test_page_in_headless_chromium(tmp_path, original_classifier) -> None:
    from selenium.webdriver.common.by import By

    with _page() as (browser, wait):
        upload = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#photos input[type=file]"))
        upload.send_keys(str(SAMPLES / "biden.jpg"))
        table = wait.until(
            lambda b: (
                b.find_element(By.ID, "faces")
                if "60-100" in b.find_element(By.ID, "faces").text
                else None
            )
        )
        text = table.text
        assert "biden.jpg" in text and "male" in text and "60-100" in text
        assert "1 face in 1 photo" in browser.find_element(By.ID, "summary").text
        images = browser.find_elements(By.CSS_SELECTOR, "#gallery img")
        assert images and images[0].get_attribute("naturalWidth") not in (None, "0")
        # the label's text as big on screen as body text: its capital height in the image,
        # times the scale the gallery shows the image at
        image = images[0]
        natural = [int(image.get_attribute(k)) for k in ("naturalWidth", "naturalHeight")]
        shown = browser.execute_script(
            "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", image
        )
        scale = min(shown[0] / natural[0], shown[1] / natural[1])
        size, thickness = font_for(*natural)
        (_, cap), _ = cv2.getTextSize("H", FONT, size, thickness)
        assert cap * scale >= 9, (cap, scale, natural, shown)
        link = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#csv a[href]"))
        with urllib.request.urlopen(link.get_attribute("href"), timeout=10) as response:
            csv_text = response.read().decode()
        assert csv_text.splitlines()[0] == ",".join(COLUMNS + PROB_COLUMNS)
        assert csv_text.splitlines()[1].startswith("biden.jpg,0,,")
        shot = tmp_path / "app.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get(SCREENSHOT_ENV):
            shutil.copy(shot, os.environ[SCREENSHOT_ENV])
        # a video dropped into the photo field: a message that says what to do
        clip = _audience_clip(tmp_path / "shop.mp4")
        upload = browser.find_element(By.CSS_SELECTOR, "#photos input[type=file]")
        upload.send_keys(str(clip))
        wait.until(lambda b: "shop.mp4 is a video" in b.find_element(By.ID, "summary").text)
        assert "use the Audience tab" in browser.find_element(By.ID, "summary").text
        assert "1 face in 1 photo" in browser.find_element(By.ID, "summary").text  # still
        badges = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".error")]
        assert "Error" not in badges, badges
        if os.environ.get(SCREENSHOT_ENV):  # the message as the page shows it, beside
            target = Path(os.environ[SCREENSHOT_ENV])
            browser.save_screenshot(str(target.with_name(f"{target.stem}_wrong_field.png")))


@pytest.mark.slow  # a browser, a clip counted and a live stream stopped; CI runs slow tests
def test_audience_tab_in_headless_chromium(tmp_path, original_classifier) -> None:
    """Upload the generated clip to the Audience tab, count it in windows of 2 s, and read
    the known audience off the page: people per window in the table, the totals, the chart
    and audience.csv to download."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    clip = _audience_clip(tmp_path / "shop.mp4")
    with _page("video.stride=2") as (browser, wait):
        tab = wait.until(
            lambda b: next(
                (
                    e
                    for e in b.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                    if e.text.strip() == "Audience"
                ),
                None,
            )  # fmt: skip
        )
        tab.click()
        # the tab explains itself in plain words, not in settings' names
        intro = browser.find_element(By.ID, "audience_tab").text
        assert "audience." not in intro and "conf/" not in intro and "Stop" in intro
        upload = wait.until(
            lambda b: b.find_element(By.CSS_SELECTOR, "#audience_video input[type=file]")
        )
        # a photo dropped here: a message that says what to do, not bare "Error" badges
        upload.send_keys(str(SAMPLES / "obama.jpg"))
        wait.until(
            lambda b: b.find_elements(
                By.CSS_SELECTOR, "#audience_video td.filename[aria-label='obama.jpg']"
            )
        )
        browser.find_element(By.ID, "audience_start").click()
        wait.until(
            lambda b: "obama.jpg is a photo" in b.find_element(By.ID, "audience_totals").text
        )
        assert "use the Photos tab" in browser.find_element(By.ID, "audience_totals").text
        assert "Error" not in [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".error")]
        browser.find_element(By.CSS_SELECTOR, "#audience_video button[aria-label=Clear]").click()
        upload = browser.find_element(By.CSS_SELECTOR, "#audience_video input[type=file]")
        upload.send_keys(str(clip))
        wait.until(
            lambda b: b.find_elements(
                By.CSS_SELECTOR, "#audience_video td.filename[aria-label='shop.mp4']"
            )
        )
        window = browser.find_element(By.CSS_SELECTOR, "#audience_window input")
        window.send_keys(Keys.CONTROL, "a")
        window.send_keys("2", Keys.TAB)
        browser.find_element(By.ID, "audience_start").click()
        totals = wait.until(
            lambda b: (
                b.find_element(By.ID, "audience_totals")
                if "Quality checks" in b.find_element(By.ID, "audience_totals").text
                else None
            )
        )
        assert f"{AUDIENCE_PEOPLE} people in 3 windows of 2 s" in totals.text
        assert "Privacy mode" in totals.text  # on by default
        rows = browser.find_elements(By.CSS_SELECTOR, "#audience_table [role=row]")
        cells = [[c.text for c in row.find_elements(By.CSS_SELECTOR, "[role=gridcell]")]
                 for row in rows]  # fmt: skip
        cells = [row for row in cells if row]  # the header row has no grid cells
        assert [row[2] for row in cells] == [str(n) for n in AUDIENCE_WINDOWS]
        assert [row[:2] for row in cells] == [["0", "2"], ["2", "4"], ["4", "6"]]
        chart = browser.find_element(By.CSS_SELECTOR, "#audience_chart img")
        assert chart.get_attribute("naturalWidth") not in (None, "0")
        link = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#audience_files a[href]"))
        with urllib.request.urlopen(link.get_attribute("href"), timeout=10) as response:
            csv_text = response.read().decode()
        assert csv_text.splitlines()[0].startswith("video,window_start,window_end,people,")
        assert [line.split(",")[3] for line in csv_text.splitlines()[1:]] == [
            str(n) for n in AUDIENCE_WINDOWS
        ]
        # a live source (a local MJPEG stream of 20 s): running counts per window, then Stop
        browser.find_element(By.CSS_SELECTOR, "#audience_video button[aria-label=Clear]").click()
        frames = zoom_frames("biden.jpg", 30) * 10
        with MJPEGServer(frames, fps=15) as camera:
            field = browser.find_element(By.CSS_SELECTOR, "#audience_stream textarea")
            field.send_keys(camera.url("/live.mjpg"))
            window = browser.find_element(By.CSS_SELECTOR, "#audience_window input")
            window.send_keys(Keys.CONTROL, "a")
            window.send_keys("1", Keys.TAB)
            browser.find_element(By.ID, "audience_start").click()
            wait.until(lambda b: "(running)" in b.find_element(By.ID, "audience_totals").text)
            browser.find_element(By.ID, "audience_stop").click()
            totals = wait.until(
                lambda b: (
                    b.find_element(By.ID, "audience_totals")
                    if "Quality checks" in b.find_element(By.ID, "audience_totals").text
                    else None
                )
            )
        assert "ended: stopped" in totals.text and "1 people in" in totals.text
