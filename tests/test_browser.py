"""End to end in a real browser: the dashboard served by Streamlit, driven by Debian's headless Chromium."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.browser
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_crossval import three_fold_selection  # noqa: E402, F401 (a session fixture)

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-dev-shm-usage", "--window-size=1400,1600")
#: Set LUNGLENS_UPDATE_SCREENSHOT=1 to refresh the README's screenshot from this test.
SCREENSHOT = ROOT / "assets" / "screenshot.png"

if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("Debian's chromium and chromium-driver are not installed (make browser)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(sel, folder: Path):
    """Serve the dashboard on a free local port, opened on ``sel``; yield its URL, then stop it."""
    spec = folder / "selection.json"
    spec.write_text(json.dumps({"config": sel.config.to_dict(), "depths": list(sel.depths)}))
    port = _free_port()
    env = {**os.environ, "LUNGLENS_SELECTION": str(spec)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/Home.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start within 90 s")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(trained_selection, tmp_path_factory):
    """The dashboard on a local port, opened on the tiny trained experiment."""
    yield from _serve(trained_selection, tmp_path_factory.mktemp("browser"))


@pytest.fixture(scope="module")
def fold_server(three_fold_selection, tmp_path_factory):
    """The dashboard opened on a tiny 3-fold experiment."""
    yield from _serve(three_fold_selection, tmp_path_factory.mktemp("browser-folds"))


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    """The folder the browser saves downloads into."""
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(tmp_path_factory, downloads):
    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    yield driver
    driver.quit()


def _downloaded(folder: Path, pattern: str, timeout: float = 60) -> Path:
    """The finished download matching ``pattern`` in ``folder`` (waits for Chromium to complete it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = [f for f in folder.glob(pattern) if not f.name.endswith(".crdownload")]
        if done:
            return done[0]
        time.sleep(0.5)
    pytest.fail(f"no download matching {pattern} in {folder}: {sorted(p.name for p in folder.iterdir())}")


def _settled(driver, expected: str, timeout: float = 180) -> str:
    """Wait until Streamlit has finished running the script and the page shows ``expected``; return the text."""
    def done(d):
        apps = d.find_elements(By.CSS_SELECTOR, '[data-testid="stApp"]')
        if not apps or apps[0].get_attribute("data-test-script-state") != "notRunning":
            return False
        body = d.find_element(By.TAG_NAME, "body").text
        return body if expected in body else False

    WebDriverWait(driver, timeout, poll_frequency=0.5).until(done)
    time.sleep(1.0)  # let Plotly finish drawing
    return driver.find_element(By.TAG_NAME, "body").text


def _assert_no_error(driver) -> None:
    assert not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "Traceback" not in body and "Error running app" not in body


def _open(driver, url: str, title: str) -> str:
    driver.get(url)
    text = _settled(driver, title)
    _assert_no_error(driver)
    return text


SLIDER = '[data-testid="stSlider"] input[type="range"]'


def _move_depth_slider(driver) -> None:
    """Move the page's depth slider to its first value with the keyboard and wait for the page to redraw."""
    slider = driver.find_element(By.CSS_SELECTOR, SLIDER)
    before = slider.get_attribute("aria-valuetext")
    slider.send_keys(Keys.HOME)
    WebDriverWait(driver, 60).until(
        lambda d: d.find_element(By.CSS_SELECTOR, SLIDER).get_attribute("aria-valuetext") != before)
    _settled(driver, "depth")
    _assert_no_error(driver)


def test_home_training_and_performance(server, browser, tmp_path):
    text = _open(browser, server, "Cached runs")
    assert "runs of this experiment are trained" in text
    if os.environ.get("LUNGLENS_UPDATE_SCREENSHOT"):
        browser.save_screenshot(str(SCREENSHOT))
    _open(browser, f"{server}/training", "Training")
    assert browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
    _move_depth_slider(browser)
    browser.save_screenshot(str(tmp_path / "training.png"))
    _open(browser, f"{server}/performance?section=test", "Performance")
    assert browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
    _move_depth_slider(browser)


def test_features_and_layers(server, browser):
    _open(browser, f"{server}/features", "Features")
    assert browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
    _move_depth_slider(browser)
    _open(browser, f"{server}/layers", "Layers")
    _move_depth_slider(browser)


def test_layers_topology_and_surrogate_and_the_backbone_bench(server, browser):
    text = _open(browser, f"{server}/layers?depth=5", "convolutions along its main path as columns")
    assert "Network topology (Wan et al. §4)" in text and "Decision-tree surrogate (Wan et al. §4)" in text
    charts = browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
    assert len(charts) >= 5  # filters, neurons, fidelity, tree, topology
    topology = charts[-1]
    assert topology.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace")  # channels and bundled edges drawn
    text = _open(browser, f"{server}/performance?section=cheng", "Backbones with and without augmentation")
    assert "Cheng et al." in text


def test_support_regions_with_an_upload(server, browser, tmp_path):
    _open(browser, f"{server}/support_regions", "Support Regions")
    _move_depth_slider(browser)
    image = tmp_path / "upload.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(image), rng.integers(0, 255, (80, 80), dtype=np.uint8))
    tab = next(t for t in browser.find_elements(By.CSS_SELECTOR, '[role="tab"]') if "Diagnose" in t.text)
    tab.click()
    _settled(browser, "PNG, JPEG, BMP, TIFF or DICOM")
    browser.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys(str(image))
    text = _settled(browser, "upload.png")
    _assert_no_error(browser)
    assert "Grad-CAM" in text


def test_support_regions_explanation_report(server, browser, tmp_path):
    _open(browser, f"{server}/support_regions", "Support Regions")
    tab = next(t for t in browser.find_elements(By.CSS_SELECTOR, '[role="tab"]') if "Explanation report" in t.text)
    tab.click()
    text = _settled(browser, "Every score against fine-tuning depth")
    _assert_no_error(browser)
    assert "Compute (" in text and "Report settings" in text and "scored on a sample" in text
    browser.save_screenshot(str(tmp_path / "explanation-report.png"))


def _click_text(driver, selector: str, text: str) -> None:
    """Click the first element matching ``selector`` whose text is ``text``."""
    next(e for e in driver.find_elements(By.CSS_SELECTOR, selector) if e.text.strip() == text).click()


def test_performance_calibration_threshold_and_external_test(server, browser, tmp_path):
    from conftest import write_tiny_folder

    text = _open(browser, f"{server}/performance?section=calibration", "Operating point")
    assert "Calibration" in text and "ECE" in text and "Brier" in text
    _click_text(browser, '[data-testid="stRadio"] label', "Youden")
    text = _settled(browser, "Youden")
    _assert_no_error(browser)
    assert "chosen on the validation split" in text
    site = write_tiny_folder(tmp_path / "site", per_class=4, seed=5)
    _open(browser, f"{server}/performance?section=external", "External test folder")
    box = next(b for b in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stSelectbox"]')
               if "External test folder" in b.text)
    box.find_element(By.TAG_NAME, "input").send_keys("A folder on this machine", Keys.ENTER)
    field = WebDriverWait(browser, 60).until(lambda d: next(
        (f for f in d.find_elements(By.CSS_SELECTOR, '[data-testid="stTextInput"]') if "Folder" in f.text), False))
    field.find_element(By.TAG_NAME, "input").send_keys(str(site), Keys.ENTER)
    text = _settled(browser, "External images scored")
    _assert_no_error(browser)
    assert "gap (external − internal)" in text and "Unlike the training data" in text
    browser.save_screenshot(str(tmp_path / "external.png"))


def test_cross_validation_views(fold_server, browser):
    text = _open(browser, f"{fold_server}/training", "one curve per fold")
    assert "Cross-validation: one curve per fold (3 folds)" in text
    text = _open(browser, f"{fold_server}/performance?section=folds", "folds on the same test split")
    assert "mean ± sd" in text or "± " in text
    assert browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")


def test_exports_report_and_a_shared_link(server, browser, downloads):
    _open(browser, f"{server}/training?depth=0", "Training")
    slider = browser.find_element(By.CSS_SELECTOR, SLIDER)
    assert slider.get_attribute("aria-valuetext") == "0"  # the link's depth, not the default (the deepest)
    csv = next(b for b in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stDownloadButton"] button')
               if "CSV" in b.text)
    csv.click()
    table = _downloaded(downloads, "*.csv")
    assert "epoch" in table.read_text().splitlines()[0]
    plot = browser.find_element(By.CSS_SELECTOR, ".js-plotly-plot")
    webdriver.ActionChains(browser).move_to_element(plot).perform()  # the toolbar shows on hover
    camera = [b for b in browser.find_elements(By.CSS_SELECTOR, ".modebar-btn")
              if "png" in (b.get_attribute("data-title") or "").lower()]
    assert camera, [b.get_attribute("data-title") for b in browser.find_elements(By.CSS_SELECTOR, ".modebar-btn")]
    browser.execute_script("arguments[0].click()", camera[0])
    png = _downloaded(downloads, "*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    _open(browser, f"{server}/performance?depth=0", "Performance")
    next(b for b in browser.find_elements(By.TAG_NAME, "button") if "Build HTML report" in b.text).click()
    WebDriverWait(browser, 300, poll_frequency=1).until(
        lambda d: any("Download HTML report" in b.text for b in d.find_elements(By.TAG_NAME, "button")))
    next(b for b in browser.find_elements(By.TAG_NAME, "button") if "Download HTML report" in b.text).click()
    report = _downloaded(downloads, "*.html", timeout=120)
    html = report.read_text()
    assert html.startswith("<!DOCTYPE html>") or "<html" in html[:500]
    assert "depth0" in report.name


def test_a_background_job_shows_progress_and_time_left_and_cancels(server, browser):
    _open(browser, f"{server}/support_regions", "Support Regions")
    tab = next(t for t in browser.find_elements(By.CSS_SELECTOR, '[role="tab"]') if "Explanation report" in t.text)
    tab.click()
    _settled(browser, "Every score against fine-tuning depth")
    next(b for b in browser.find_elements(By.TAG_NAME, "button") if "Compute (" in b.text).click()
    bar = WebDriverWait(browser, 120, poll_frequency=0.2).until(
        lambda d: next((p for p in d.find_elements(By.CSS_SELECTOR, '[data-testid="stProgress"]')
                        if "Explanation report" in p.text), False))
    assert "%" in bar.text and ("left" in bar.text or "estimating" in bar.text)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Every score against fine-tuning depth" in body  # the page stays drawn and usable while the job runs
    next(b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip().endswith("Cancel")).click()
    WebDriverWait(browser, 120, poll_frequency=0.5).until(
        lambda d: "Cancelled" in d.find_element(By.TAG_NAME, "body").text)
    _assert_no_error(browser)
    assert not [p for p in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stProgress"]')
                if "Explanation report" in p.text]


def test_a_shared_link_reopens_the_same_depth_image_and_method(server, browser, trained_selection):
    import engine

    run = engine.get_run(trained_selection.config.replace(depth=0))
    tests = run.predictions[run.predictions["split"] == "test"]
    file = str(tests["file"].iloc[1])  # not the default (first) image
    text = _open(browser, f"{server}/support_regions?depth=0&section=explain&image={file}&method=gradcam,lime",
                 "Support Regions")
    _settled(browser, "LIME")
    assert browser.find_element(By.CSS_SELECTOR, SLIDER).get_attribute("aria-valuetext") == "0"
    text = browser.find_element(By.TAG_NAME, "body").text
    assert Path(file).name in text  # the linked image is the one chosen (the picker shows its name)
    assert "Grad-CAM" in text and "LIME" in text
    url = urllib.parse.unquote(browser.current_url)  # the page writes its state back: the link still names the same view
    assert "depth=0" in url and f"image={file}" in url and "method=gradcam" in url and "lime" in url


@pytest.fixture(scope="module")
def ct_server(trained_ct, tmp_path_factory):
    """The dashboard opened on the tiny 3-D CT experiment."""
    yield from _serve(trained_ct, tmp_path_factory.mktemp("browser-ct"))


def test_the_slice_viewer_of_a_ct_run(ct_server, browser, trained_ct):
    import engine

    run = engine.get_run(trained_ct.config.replace(depth=2))
    file = str(run.predictions["file"][run.predictions["split"] == "test"].iloc[1])
    _open(browser, f"{ct_server}/support_regions?depth=2&case={file}&slice=5&plane=all&method=gradcam",
          "Axial slice")
    text = _settled(browser, "Sagittal")
    assert "Coronal" in text and f"case={file}" in urllib.parse.unquote(browser.current_url)  # the linked case kept
    sliders = browser.find_elements(By.CSS_SELECTOR, SLIDER)
    axial = next(s for s in sliders if s.get_attribute("aria-valuetext") == "5")  # the linked slice
    assert len(browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) >= 1
    axial.send_keys(Keys.ARROW_RIGHT)  # one slice down: the page redraws and writes the new slice into the URL
    WebDriverWait(browser, 60).until(lambda d: "slice=6" in urllib.parse.unquote(d.current_url))
    _settled(browser, "Sagittal")
    _assert_no_error(browser)
    if os.environ.get("LUNGLENS_SCREENSHOT_DIR"):
        browser.set_window_size(1400, 1400)
        browser.save_screenshot(str(Path(os.environ["LUNGLENS_SCREENSHOT_DIR"]) / "slice_viewer.png"))
