"""The Serve app for people and operators: its web page in a real headless Chromium, its metrics read
from Ray's Prometheus endpoint, and backpressure (fast 503s with Retry-After) under overload."""

import concurrent.futures
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request

import pytest

from conftest import jpeg_bytes, post, random_image
from local_cluster import free_port
from raysegment.data import BUNDLED_MODEL, SAMPLES

pytestmark = pytest.mark.slow

ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "output", "test-artifacts")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def apps(ray_local, inference_dir):
    """The bundled CamVid model and an untrained one behind one app with the page (/web), one with
    the page off (/noui), and one that holds one request and queues one (/busy)."""
    from ray import serve

    from raysegment.serve import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    common = {"num_replicas": 1, "cpus_per_replica": 0.5, "threads_per_replica": 1}
    serve.run(build_app({**common, "model_dir": BUNDLED_MODEL, "target_size": [480, 360],
                         "models": {"camvid": BUNDLED_MODEL, "untrained": inference_dir}}), name="web", route_prefix="/web")
    serve.run(build_app({**common, "model_dir": inference_dir, "ui": False}), name="noui", route_prefix="/noui")
    serve.run(build_app({**common, "model_dir": inference_dir, "max_batch_size": 1, "max_ongoing_requests": 1,
                         "max_queued_requests": 1, "retry_after_s": 2}), name="busy", route_prefix="/busy")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture
def browser():
    pytest.importorskip("selenium")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Chromium and its driver (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # the system browser: nothing downloaded
    yield driver
    driver.quit()


def _segment_in_page(browser, path, model=""):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.execute_script("lastResult = null; document.getElementById('legend').replaceChildren();"
                           "document.getElementById('file').value = '';")
    Select(browser.find_element(By.ID, "model")).select_by_value(model)
    browser.find_element(By.ID, "file").send_keys(path)  # choosing a file starts the request
    WebDriverWait(browser, 120).until(lambda d: d.execute_script(
        "return (lastResult !== null && document.getElementById('mask').complete && document.getElementById('mask').naturalWidth > 0)"
        " || document.getElementById('status').className === 'error'"))
    assert browser.find_element(By.ID, "status").get_attribute("class") != "error", browser.find_element(By.ID, "status").text
    legend = [li.get_attribute("data-class") for li in browser.find_elements(By.CSS_SELECTOR, "#legend li")]
    return browser.execute_script("return lastResult;"), legend


def test_the_web_page_segments_an_upload_with_each_served_model(apps, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{apps}/web/")  # redirects to the page, under the app's route prefix
    assert browser.current_url == f"{apps}/web/ui"
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#model option")]
    assert options == ["", "camvid", "untrained"]
    sample = os.path.join(SAMPLES, sorted(os.listdir(SAMPLES))[0])

    answer, legend = _segment_in_page(browser, sample)
    assert answer["model"] == "PP-LiteSeg-T" and answer["model_id"] is None
    assert sorted(legend) == sorted(answer["pixel_counts"]) and {"road", "sky"} <= set(legend)
    facts = browser.find_element(By.ID, "facts").text
    assert answer["engine"] in facts and "s round trip" in facts
    links = {a.text: a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")}
    assert links["label PNG"] == f"data:image/png;base64,{answer['mask']['data']}" and links["JSON"].startswith("blob:")
    browser.execute_script("const s = document.getElementById('opacity'); s.value = 0.25; s.dispatchEvent(new Event('input'));")
    assert browser.find_element(By.ID, "mask").value_of_css_property("opacity") == "0.25"
    os.makedirs(ARTIFACTS, exist_ok=True)
    browser.execute_script("const s = document.getElementById('opacity'); s.value = 0.6; s.dispatchEvent(new Event('input'));")
    assert browser.save_screenshot(os.path.join(ARTIFACTS, "serve-ui.png"))

    answer, legend = _segment_in_page(browser, sample, model="untrained")  # another model, another set of classes
    assert answer["model_id"] == "untrained" and sorted(legend) == sorted(answer["pixel_counts"])
    assert set(legend) <= {"sky", "road", "car"}


def test_the_page_can_be_turned_off(apps):
    for path in ("/noui/ui", "/noui/"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{apps}{path}", timeout=30)
        assert e.value.code == 404 and "ui false" in json.loads(e.value.read())["errorMsg"]
    with urllib.request.urlopen(f"{apps}/web/ui", timeout=30) as page:  # where it is on, the page knows the served models
        assert re.search(rb'"models":\["","camvid","untrained"\]', page.read())


def _metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        return resp.read().decode()


def _value(text, name, **labels):
    """The summed value of every sample of `name` whose labels include `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total, found = total + float(line.rsplit(" ", 1)[1]), True
    return total if found else None


def test_a_request_moves_the_service_counters_read_from_rays_metrics_endpoint(apps, ray_local):
    port = ray_local.nodes()[0]["MetricsExportPort"]
    image = jpeg_bytes(random_image(64, 96, seed=3))
    for _ in range(3):
        status, _ = post(f"{apps}/busy/predict", image, "image/jpeg")
        assert status == 200
    status, _ = post(f"{apps}/busy/predict", b"x", "text/plain")
    assert status == 415
    last_forward = time.time()
    wanted = {("ray_raysegment_requests_total", (("route", "/predict"), ("status", "200"), ("model", "default"))): 3,
              ("ray_raysegment_requests_total", (("route", "/predict"), ("status", "415"))): 1,
              ("ray_raysegment_images_total", (("model", "default"),)): 3,
              ("ray_raysegment_pixels_total", (("model", "default"),)): 3 * 64 * 96,
              ("ray_raysegment_forward_seconds_count", (("model", "default"),)): 3,
              ("ray_raysegment_batch_size_count", (("model", "default"),)): 3,
              ("ray_raysegment_request_seconds_count", (("route", "/predict"),)): 4}
    engine = re.compile(r'ray_raysegment_engine\{[^}]*engine="[^"]+"[^}]*model="default"')
    deadline, seen = time.time() + 90, {}
    while time.time() < deadline:  # Ray's workers report metrics every few seconds
        text = _metrics(port)
        seen = {key: _value(text, key[0], **dict(key[1])) for key in wanted}
        if all(seen[key] is not None and seen[key] >= n for key, n in wanted.items()) and engine.search(text):
            break
        time.sleep(2)
    # other tests of this module may have sent more; at least these requests are counted
    assert all(seen[key] is not None and seen[key] >= n for key, n in wanted.items()), seen
    assert engine.search(text)
    # Ray drops a gauge nobody set for two export intervals (20 s); the health check sets it again
    time.sleep(max(0.0, last_forward + 35 - time.time()))
    assert engine.search(_metrics(port)), "the engine gauge of an idle replica was dropped"
    assert "ray_raysegment_queue_seconds_bucket" in text


def test_overload_gets_fast_503s_with_retry_after_and_the_service_recovers(apps):
    """/busy holds one request and queues one: of 24 sent at once, the others are turned away at
    once with Retry-After, none waits out a timeout, and the service answers normally after."""
    image = jpeg_bytes(random_image(600, 800, seed=5))  # a forward long enough that they overlap

    def send(_):
        request = urllib.request.Request(f"{apps}/busy/predict", image, {"Content-Type": "image/jpeg"}, method="POST")
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                return resp.status, None, time.perf_counter() - started
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Retry-After"), time.perf_counter() - started

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(send, range(24)))
    statuses = [a[0] for a in answers]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    assert all(retry == "2" for status, retry, _ in answers if status == 503)
    assert max(seconds for status, _, seconds in answers if status == 503) < 10  # turned away, not queued
    assert send(0)[0] == 200
