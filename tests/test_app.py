"""The web demo (python -m agegender.app): its one seam against predict.py, and the page end
to end in a real headless Chromium on 127.0.0.1 (upload a sample photo, read the labels off
the page, download the CSV)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, SAMPLES, require

from agegender.inference import COLUMNS, PROB_COLUMNS, predict

#: Set to a path to keep the browser's screenshot (docs/app_screenshot.png is made this way).
SCREENSHOT_ENV = "AGEGENDER_APP_SCREENSHOT"


@pytest.fixture(scope="module")
def agegender(original_classifier):  # noqa: ANN201 - AgeGender (imported lazily)
    """The demo's API object with the original weights (cached: original_classifier
    skips or, under CI, fails without them)."""
    from agegender.api import AgeGender

    return AgeGender(download=False)


def test_analyse_gives_predict_py_rows(tmp_path, agegender) -> None:
    from agegender.app import analyse

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
    assert result.table[0][2:5] == ["male", 1.0, "60-100"]
    assert [caption for _, caption in result.gallery] == ["biden.jpg: 1 face", "obama.jpg: 1 face"]
    image, _ = result.gallery[0]
    assert image.dtype == np.uint8 and image.ndim == 3 and result.faces == 2


def test_analyse_webcam_snapshot(agegender) -> None:
    from agegender.app import analyse
    from agegender.images import load_image

    snapshot = load_image(SAMPLES / "obama.jpg")
    result = analyse(agegender, [], snapshot)
    assert [r[0] for r in result.table] == ["webcam.png"] and result.faces == 1
    assert analyse(agegender).table == []


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


def test_page_in_headless_chromium(tmp_path, original_classifier) -> None:
    try:
        import gradio  # noqa: F401
        from selenium import webdriver
    except ImportError as error:
        require(
            False, f"the browser test needs gradio and selenium (pip install -e '.[dev]'): {error}"
        )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = _browser()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "agegender.app", "--port", str(port)],
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
        wait = WebDriverWait(browser, 90)
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
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
