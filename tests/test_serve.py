"""The Ray Serve app on a local Ray, over real HTTP to 127.0.0.1."""

import base64
import concurrent.futures
import json
import os
import urllib.error
import urllib.request

import cv2
import numpy as np
import paddle
import pytest

import raysegment
from raysegment.config import ConfigError
from raysegment.infer import decode_mask

from conftest import jpeg_bytes, pdf_bytes, png_bytes, post, random_image, serve_folder
from local_cluster import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIXEL_LIMIT = 300 * 300
BODY_LIMIT = 1_000_000


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    (root / "a.jpg").write_bytes(jpeg_bytes(random_image(64, 96, seed=11)))
    (root / "sub").mkdir()  # GET /sub answers a 301 redirect to /sub/
    with serve_folder(root) as url:
        yield url


@pytest.fixture(scope="module")
def service(ray_local, inference_dir, maskformer_dir, www):
    """Two apps on one Serve instance: the defaults (URL inputs off) at /, and one that fetches URLs
    from the local HTTP server at /urls."""
    from ray import serve

    from raysegment.serve import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 30})
    # one replica each: three apps share the test's 2-CPU Ray (the default sizes one app for the whole cluster)
    common = {"model_dir": inference_dir, "num_replicas": 1, "cpus_per_replica": 0.5, "threads_per_replica": 1, "max_batch_size": 4,
              "batch_wait_timeout_s": 0.02, "max_image_pixels": PIXEL_LIMIT, "max_body_bytes": BODY_LIMIT,
              "max_queued_requests": 64}  # room for the 50-request burst below (backpressure: test_serve_operations.py)
    serve.run(build_app(common), name="seg", route_prefix="/")
    allowed = www.split("//")[1]
    # the URL app also slides (128 x 128 windows): every image of the URL tests is smaller than that
    serve.run(build_app({**common, "allow_url_inputs": True, "url_allowlist": [allowed, "169.254.169.254"], "slide_window": 128,
                         "slide_stride": 96}), name="urls", route_prefix="/urls")
    serve.run(build_app({**common, "model_dir": maskformer_dir}), name="maskformer", route_prefix="/maskformer")
    # many models behind one app: three ids on two replicas that hold one model each, so cycling
    # through them evicts and reloads
    serve.run(build_app({**common, "num_replicas": 2, "cpus_per_replica": 0.25, "max_models_per_replica": 1,
                         "models": many_models(inference_dir, maskformer_dir)}), name="multi", route_prefix="/multi")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


_MANY = {}


def many_models(inference_dir, maskformer_dir):
    """{id: folder} of three different models: two PP-LiteSeg-T (other weights) and a MaskFormer."""
    if not _MANY:
        from raysegment.infer import export_model
        from raysegment.models import build_model

        paddle.seed(99)
        other = build_model("PP-LiteSeg-T", num_classes=2)
        other.eval()
        site_c = os.path.join(os.path.dirname(inference_dir), "site_c")  # in the session's temp folder
        _MANY.update(site_a=inference_dir, site_b=maskformer_dir,
                     site_c=export_model(other, site_c, "PP-LiteSeg-T", ["ground", "thing"]))
    return dict(_MANY)


@pytest.fixture(scope="module")
def model(inference_dir):
    return raysegment.create_model(model_dir=inference_dir)


def b64(data):
    return base64.b64encode(data).decode()


def expected(model, rgb, **kw):
    """create_model().predict's mask for an RGB image (arrays go in as OpenCV's BGR, as in PaddleX)."""
    return next(iter(model.predict(np.ascontiguousarray(rgb[:, :, ::-1]), **kw)))["pred"][0]


def label_map(answer):
    h, w = answer["result"]["size"]
    return np.asarray(answer["result"]["labelMap"]).reshape(h, w)


@pytest.mark.slow
def test_label_map_equals_create_model(service, model):
    img = random_image(72, 100, seed=3)
    status, answer = post(f"{service}/semantic-segmentation", {"image": b64(jpeg_bytes(img))})
    assert status == 200, answer
    assert answer["errorCode"] == 0 and answer["errorMsg"] == "Success" and answer["logId"]
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg_bytes(img), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    mask = expected(model, decoded)
    assert answer["result"]["size"] == [72, 100]
    np.testing.assert_array_equal(label_map(answer), mask)
    assert len(np.unique(mask)) > 1
    assert answer["result"]["image"] is None


@pytest.mark.slow
def test_another_architecture_is_served_the_same_way(service, maskformer_dir):
    img = random_image(72, 100, seed=5)
    status, answer = post(f"{service}/maskformer/semantic-segmentation", {"image": b64(png_bytes(img[:, :, ::-1]))})
    assert status == 200, answer
    np.testing.assert_array_equal(label_map(answer), expected(raysegment.create_model(model_dir=maskformer_dir), img))


@pytest.mark.slow
def test_target_size_and_visualization(service, model):
    img = random_image(64, 96, seed=4)
    status, answer = post(f"{service}/semantic-segmentation", {"image": b64(png_bytes(img[:, :, ::-1])), "targetSize": [48, 32],
                                                               "visualize": True})
    assert status == 200, answer
    np.testing.assert_array_equal(label_map(answer), expected(model, img, target_size=(48, 32)))
    vis = cv2.imdecode(np.frombuffer(base64.b64decode(answer["result"]["image"]), np.uint8), cv2.IMREAD_COLOR)
    assert vis.shape == (64, 96, 3)


@pytest.mark.slow
def test_predict_route_takes_raw_bytes_and_multipart(service, model):
    img = random_image(50, 70, seed=5)
    mask = expected(model, img)
    status, raw = post(f"{service}/predict", png_bytes(img[:, :, ::-1]), "image/png")
    assert status == 200, raw
    np.testing.assert_array_equal(decode_mask(raw["mask"]), mask)
    assert (raw["width"], raw["height"]) == (70, 50) and raw["class_names"] == ["sky", "road", "car"]
    assert sum(raw["pixel_counts"].values()) == 50 * 70
    assert raw["pixel_counts"] == {n: int((mask == k).sum()) for k, n in enumerate(raw["class_names"]) if (mask == k).any()}

    boundary = "raysegmentboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png_bytes(img[:, :, ::-1]) + f"\r\n--{boundary}--\r\n".encode()
    status, multi = post(f"{service}/predict", body, f"multipart/form-data; boundary={boundary}")
    assert status == 200, multi
    np.testing.assert_array_equal(decode_mask(multi["mask"]), mask)


@pytest.mark.slow
def test_an_app_with_slide_window_predicts_window_by_window(service, inference_dir):
    img = random_image(200, 300, seed=12)
    status, answer = post(f"{service}/urls/predict", png_bytes(img[:, :, ::-1]), "image/png")
    assert status == 200, answer
    slid = raysegment.create_model(model_dir=inference_dir, slide_window=128, slide_stride=96)
    np.testing.assert_array_equal(decode_mask(answer["mask"]), expected(slid, img))


def post_with_header(url, body, content_type, headers):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type, **headers}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_many_models_behind_one_app_load_on_demand_and_evict(service, inference_dir, maskformer_dir):
    models = many_models(inference_dir, maskformer_dir)
    img = random_image(48, 64, seed=13)
    want = {m: expected(raysegment.create_model(model_dir=folder), img) for m, folder in models.items()}
    body = png_bytes(img[:, :, ::-1])
    for _ in range(2):  # 3 models, 2 replicas holding 1 each: every round evicts and reloads
        for m in sorted(models):
            status, answer = post_with_header(f"{service}/multi/predict", body, "image/png", {"serve_multiplexed_model_id": m})
            assert status == 200 and answer["model_id"] == m, answer
            np.testing.assert_array_equal(decode_mask(answer["mask"]), want[m])
    status, answer = post(f"{service}/multi/models/site_b/predict", body, "image/png")
    assert status == 200 and answer["model"] == "MaskFormer_tiny"
    np.testing.assert_array_equal(decode_mask(answer["mask"]), want["site_b"])
    status, answer = post(f"{service}/multi/semantic-segmentation", {"image": b64(body), "model": "site_c"})
    assert status == 200, answer
    np.testing.assert_array_equal(label_map(answer), want["site_c"])
    status, answer = post(f"{service}/multi/semantic-segmentation", {"image": b64(body)})  # PaddleX's route: the default model
    np.testing.assert_array_equal(label_map(answer), want["site_a"])
    for route, headers in (("/multi/models/site_x/predict", {}), ("/multi/predict", {"serve_multiplexed_model_id": "../etc"})):
        status, answer = post_with_header(f"{service}{route}", body, "image/png", headers)
        assert status == 404 and "is not served here; served model ids: site_a, site_b, site_c" in answer["errorMsg"], answer


@pytest.mark.slow
def test_predict_route_takes_a_pdf_page_by_page(service, model):
    from raysegment.data.pdf import render_pages

    pdf = pdf_bytes(random_image(40, 60, seed=8), random_image(30, 30, seed=9))
    for content_type in ("application/pdf", "application/octet-stream"):
        status, answer = post(f"{service}/predict", pdf, content_type)
        assert status == 200, answer
        assert [p["page_index"] for p in answer["pages"]] == [0, 1] and answer["model"] == "PP-LiteSeg-T"
        for page, rgb in zip(answer["pages"], render_pages(pdf)):
            assert (page["height"], page["width"]) == rgb.shape[:2]
            np.testing.assert_array_equal(decode_mask(page["mask"]), expected(model, rgb))
    status, answer = post(f"{service}/predict", b"%PDF-1.4 nothing more", "application/pdf")
    assert status == 400 and "not a readable PDF" in answer["errorMsg"], answer


@pytest.mark.slow
def test_health_and_ready(service):
    status, _ = post(f"{service}/semantic-segmentation", {"image": b64(jpeg_bytes(random_image(40, 56, seed=5)))})
    assert status == 200
    with urllib.request.urlopen(f"{service}/health", timeout=30) as resp:
        assert json.loads(resp.read())["errorMsg"] == "Healthy"
    with urllib.request.urlopen(f"{service}/ready", timeout=30) as resp:
        ready = json.loads(resp.read())
    assert ready["model"] == "PP-LiteSeg-T" and ready["class_names"] == ["sky", "road", "car"] and ready["max_batch_size"] == 4
    # the engine chosen for each input shape seen so far, and why
    assert set(ready["run_mode"].split(", ")) <= {"onnxruntime", "openvino:fp32", "paddle:mkldnn"}
    assert any(r.startswith("input 40x56: ") and "masks equal Paddle's" in r for r in ready["engine_reasons"])


@pytest.mark.slow
def test_url_input_from_an_allowlisted_host(service, www, model):
    status, answer = post(f"{service}/urls/semantic-segmentation", {"image": f"{www}/a.jpg"})
    assert status == 200, answer
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg_bytes(random_image(64, 96, seed=11)), np.uint8), cv2.IMREAD_COLOR),
                       cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(label_map(answer), expected(model, rgb))


def _big_jpeg():
    return jpeg_bytes(random_image(400, 400, seed=6))  # 160000 pixels > PIXEL_LIMIT, ~30 kB


def _cut_jpeg():
    data = jpeg_bytes(random_image(64, 96, seed=7))
    return data[: len(data) // 2]


BAD_REQUESTS = {
    # name: (route, body, content type, status, words the message must contain)
    "malformed JSON": ("/semantic-segmentation", b'{"image": ', "application/json", 422, "not valid JSON"),
    "missing field": ("/semantic-segmentation", {"visualize": True}, "application/json", 422, "'image'"),
    "unknown field": ("/semantic-segmentation", {"image": "AAAA", "imgae": 1}, "application/json", 422, "imgae"),
    "wrong field type": ("/semantic-segmentation", {"image": 5}, "application/json", 422, "'image'"),
    "bad targetSize": ("/semantic-segmentation", {"image": "AAAA", "targetSize": "big"}, "application/json", 422, "targetSize"),
    "bad base64": ("/semantic-segmentation", {"image": "not base64 at all!"}, "application/json", 400, "base64"),
    "non-image bytes": ("/semantic-segmentation", {"image": b64(b"hello, not an image")}, "application/json", 400, "not a decodable image"),
    "empty image": ("/predict", b"", "image/jpeg", 400, "empty"),
    "truncated image": ("/semantic-segmentation", {"image": b64(_cut_jpeg())}, "application/json", 400, "not a decodable image"),
    "over the pixel limit": ("/semantic-segmentation", {"image": b64(_big_jpeg())}, "application/json", 413, "max_image_pixels"),
    "over the pixel limit, raw": ("/predict", _big_jpeg(), "image/jpeg", 413, "max_image_pixels"),
    "oversized body": ("/predict", b"\xff" * (BODY_LIMIT + 10), "image/jpeg", 413, "max_body_bytes"),
    "URL inputs off": ("/semantic-segmentation", {"image": "http://127.0.0.1:1/a.jpg"}, "application/json", 403, "URL inputs are off"),
    "file URL": ("/urls/semantic-segmentation", {"image": "file:///etc/passwd"}, "application/json", 403, "file:"),
    "host not allowed": ("/urls/semantic-segmentation", {"image": "http://example.com/a.jpg"}, "application/json", 403, "url_allowlist"),
    "link-local host": ("/urls/semantic-segmentation", {"image": "http://169.254.169.254/latest/meta-data"}, "application/json", 403, "link-local"),
    "wrong content type": ("/semantic-segmentation", b"image=abc", "application/x-www-form-urlencoded", 415, "application/json"),
    "a PDF to PaddleX's image route": ("/semantic-segmentation", {"image": b64(pdf_bytes(random_image(20, 20)))}, "application/json",
                                       415, "POST the PDF's bytes to /predict"),
    "JSON to the raw route": ("/predict", {"image": "AAAA"}, "application/json", 415, "application/pdf"),
    "multipart without file": ("/predict", b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n",
                               "multipart/form-data; boundary=b", 422, "'file'"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_envelope_and_the_next_request_works(service, name):
    route, body, content_type, want_status, words = BAD_REQUESTS[name]
    status, answer = post(f"{service}{route}", body, content_type)
    assert status == want_status, answer
    assert answer["errorCode"] == want_status and answer["logId"]
    assert words in answer["errorMsg"], answer["errorMsg"]
    status, good = post(f"{service}{route.replace('semantic-segmentation', 'predict').replace('/urls', '')}",
                        jpeg_bytes(random_image(32, 32, seed=8)), "image/jpeg")
    assert status == 200, good


@pytest.mark.slow
def test_url_that_404s_and_redirects_are_refused(service, www):
    status, answer = post(f"{service}/urls/semantic-segmentation", {"image": f"{www}/missing.jpg"})
    assert status == 400 and "404" in answer["errorMsg"]
    status, answer = post(f"{service}/urls/semantic-segmentation", {"image": f"{www}/sub"})
    assert status == 400 and "301" in answer["errorMsg"]


@pytest.mark.slow
def test_unknown_route_keeps_the_envelope(service):
    status, answer = post(f"{service}/nope", {"image": "AAAA"})
    assert status == 404 and answer["errorCode"] == 404 and "/nope" in answer["errorMsg"]


@pytest.mark.slow
def test_fifty_concurrent_requests_all_succeed(service, model):
    images = [random_image(48 + 8 * (i % 3), 64, seed=100 + i) for i in range(50)]

    def one(img):
        return post(f"{service}/semantic-segmentation", {"image": b64(png_bytes(img[:, :, ::-1]))})

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(one, images))
    assert [status for status, _ in answers] == [200] * 50
    for img, (_, answer) in zip(images[:5], answers[:5]):
        np.testing.assert_array_equal(label_map(answer), expected(model, img))


def test_build_app_refuses_bad_args(inference_dir, tmp_path):
    from raysegment.serve import build_app, load_serve_config

    with pytest.raises(ConfigError, match="unknown key 'max_batch'"):
        build_app({"model_dir": inference_dir, "max_batch": 4})
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        build_app({"model_dir": inference_dir, "max_batch_size": 64, "max_ongoing_requests": 8})
    with pytest.raises(ValueError, match="not a folder"):
        build_app({"model_dir": str(tmp_path / "missing")})
    (tmp_path / "photos").mkdir()
    with pytest.raises(ValueError, match=r"model folder .*photos' has no inference.yml"):
        build_app({"model_dir": str(tmp_path / "photos")})  # refused before anything deploys
    with pytest.raises(ValueError, match=r"args.models.site: model folder .*photos' has no inference.yml"):
        build_app({"model_dir": inference_dir, "models": {"site": str(tmp_path / "photos")}})
    with pytest.raises(ValueError, match="model id '../x' must be letters"):
        build_app({"model_dir": inference_dir, "models": {"../x": inference_dir}})
    with pytest.raises(ValueError, match=r"args.models.site: .* is not a folder"):
        build_app({"model_dir": inference_dir, "models": {"site": str(tmp_path / "missing")}})
    hpi = load_serve_config(None, ["use_hpip=true", "hpi_config.backend=openvino", "hpi_config.backend_config.precision=bf16"],
                            model_dir=inference_dir)
    assert (hpi.engine_spec().engine, hpi.engine_spec().precision) == ("openvino", "bf16")  # PaddleX's hpi keys reach replicas
    for value, says in [(-2, r"max_queued_requests: -2 is below the minimum -1"), (0, r"max_queued_requests is 0; Serve takes -1")]:
        with pytest.raises(ConfigError, match=says):
            load_serve_config(None, [f"max_queued_requests={value}"], model_dir=inference_dir)
    with pytest.raises(ConfigError, match=r"unknown key 'retry_after'.*did you mean 'retry_after_s'"):
        load_serve_config(None, ["retry_after=3"], model_dir=inference_dir)
    with pytest.raises(ConfigError, match="precision int8 needs engine_config.calibration_images"):
        load_serve_config(None, ["engine_config.precision=int8"], model_dir=inference_dir)
    with pytest.raises(ConfigError, match="calibration_images applies to precision int8, not bf16"):
        load_serve_config(None, ["engine_config.precision=bf16", "engine_config.calibration_images=/x"], model_dir=inference_dir)
    with pytest.raises(ConfigError, match="hpi_config applies with use_hpip"):
        load_serve_config(None, ["hpi_config.backend=openvino"], model_dir=inference_dir)
    opts = load_serve_config(os.path.join(ROOT, "configs", "serve.yaml"), ["max_batch_size=2"], port=9000)
    assert (opts.host, opts.port, opts.max_batch_size, opts.allow_url_inputs) == ("127.0.0.1", 9000, 2, False)


PADDLEX_PIPELINE_FILE = """
pipeline_name: semantic_segmentation

SubModules:
  SemanticSegmentation:
    module_name: semantic_segmentation
    model_name: PP-LiteSeg-T
    model_dir: {model_dir}
    batch_size: 1
    target_size: None
"""  # PaddleX's own pipeline file (paddlex/configs/pipelines/semantic_segmentation.yaml), model_dir filled in


@pytest.mark.slow
@pytest.mark.parametrize("command", ["jobs/serve.py", "raysegment --serve"])
def test_serve_commands_answer_then_stop_cleanly_on_sigterm(command, inference_dir, tmp_path):
    """jobs/serve.py, and `raysegment --serve --pipeline` on a PaddleX pipeline file, as a user runs
    them: their own local Ray, a real request, then SIGTERM."""
    import signal
    import subprocess
    import sys
    import time

    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": ""}
    if command == "jobs/serve.py":
        argv = [sys.executable, os.path.join(ROOT, "jobs", "serve.py"), "--model-dir", inference_dir, "--port", str(port),
                "-o", "threads_per_replica=1"]
    else:
        pipeline = tmp_path / "pipeline.yaml"
        pipeline.write_text(PADDLEX_PIPELINE_FILE.format(model_dir=inference_dir))
        argv = [os.path.join(os.path.dirname(sys.executable), "raysegment"), "--serve", "--pipeline", str(pipeline),
                "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
                    assert json.loads(resp.read())["model"] == "PP-LiteSeg-T"
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):  # not up yet, or slow to answer
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(1)
        else:
            pytest.fail(f"{command} did not become ready in 120 s")
        status, answer = post(f"http://127.0.0.1:{port}/predict", jpeg_bytes(random_image(40, 60, seed=9)), "image/jpeg")
        assert status == 200 and (answer["width"], answer["height"]) == (60, 40)
        img = random_image(40, 60, seed=10)
        status, answer = post(f"http://127.0.0.1:{port}/semantic-segmentation", {"image": b64(png_bytes(img[:, :, ::-1]))})
        assert status == 200, answer
        np.testing.assert_array_equal(label_map(answer), expected(raysegment.create_model(model_dir=inference_dir), img))
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"at http://127.0.0.1:{port}" in out and "SIGTERM: service shut down" in out
    for noise in ("Token authentication is enabled", "will not be applied", "graceful_shutdown", "Started Serve"):
        assert noise not in out, out  # nothing a user can act on
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5)


@pytest.mark.slow
def test_a_replica_that_cannot_start_is_one_error_with_its_own_reason(service, tmp_path, checkpoint_dir):
    """A folder that looks like a model but whose weights do not load fails in the replica: the
    error says why, not only that Serve's deployment failed."""
    import shutil

    from ray import serve

    from raysegment.serve import load_serve_config, start

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint_dir, broken)
    (broken / "model.pdparams").write_bytes(b"not a pickle")
    opts = load_serve_config(None, ["num_replicas=1", "cpus_per_replica=0"], model_dir=str(broken), port=int(service.rsplit(":", 1)[1]))
    try:
        with pytest.raises(ValueError, match=r"^the service did not start: .*WeightsError: cannot read weights file .*model.pdparams"):
            start(opts, name="broken", route_prefix="/broken")
    finally:
        serve.delete("broken")

