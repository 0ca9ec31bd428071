"""Shared fixtures: tiny models and images made here, a real local HTTP server and a real S3
endpoint (moto's server mode) on 127.0.0.1. Nothing here needs the team-shared data folder or the network."""

import atexit
import contextlib
import functools
import http.server
import json
import logging
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.request

import cv2
import numpy as np
import paddle
import pytest

from raysegment import storage
from raysegment.infer import export_model, save_checkpoint
from raysegment.models import build_model

# ONNX files converted during the run (infer/engines/conversion.py) go to a folder of this run's own, which
# Ray workers inherit, not the user's ~/.cache
os.environ["RAYSEGMENT_CACHE_DIR"] = tempfile.mkdtemp(prefix="raysegment-test-cache-")
atexit.register(shutil.rmtree, os.environ["RAYSEGMENT_CACHE_DIR"], True)

REFERENCE_KEYS = os.path.join(os.path.dirname(__file__), "reference_keys")
CLASS_NAMES = ["sky", "road", "car"]


def random_image(h, w, seed=0):
    """A smooth random RGB image: blobs rather than noise, so resizing changes masks only a little."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def jpeg_bytes(img_rgb, quality=95):
    return cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def png_bytes(img):
    return cv2.imencode(".png", img)[1].tobytes()


def pdf_bytes(*images_rgb):
    """A PDF with one page per RGB image, each page the image's size in points (Pillow writes it)."""
    import io

    from PIL import Image

    pages = [Image.fromarray(img) for img in images_rgb]
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", resolution=72.0, save_all=True, append_images=pages[1:])
    return buf.getvalue()


def pytest_collection_modifyitems(items):
    """The README's quickstarts run first: they start Ray as on a user's machine (`ray start --head`
    on Ray's default ports, its agent on 52365), which a Ray this suite started would already hold.
    Tests marked gpu are skipped where Paddle sees no CUDA GPU."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/test_readme.py::test_quickstart"))
    if not (paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0):
        skip = pytest.mark.skip(reason="needs a CUDA GPU and paddlepaddle-gpu")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_layer():
    """An untrained PP-LiteSeg-T with 3 classes, in eval mode (weights fixed by seed)."""
    paddle.seed(7)
    layer = build_model("PP-LiteSeg-T", num_classes=len(CLASS_NAMES))
    layer.eval()
    return layer


@pytest.fixture(scope="session")
def checkpoint_dir(tiny_layer, tmp_path_factory):
    return save_checkpoint(tiny_layer, str(tmp_path_factory.mktemp("ckpt")), "PP-LiteSeg-T", CLASS_NAMES)


@pytest.fixture(scope="session")
def inference_dir(tiny_layer, tmp_path_factory):
    return export_model(tiny_layer, str(tmp_path_factory.mktemp("inference")), "PP-LiteSeg-T", CLASS_NAMES)


@pytest.fixture(scope="session")
def maskformer_dir(tmp_path_factory):
    """An exported untrained MaskFormer_tiny with 3 classes: the model least like PP-LiteSeg (Swin
    windows, queries, per-class scores), for the bulk job and the service."""
    paddle.seed(7)
    layer = build_model("MaskFormer_tiny", num_classes=len(CLASS_NAMES))
    layer.eval()
    return export_model(layer, str(tmp_path_factory.mktemp("maskformer")), "MaskFormer_tiny", CLASS_NAMES)


@pytest.fixture
def image_dir(tmp_path):
    """Three images in a small tree, two sizes and two formats."""
    paths = {
        "a.jpg": random_image(64, 96, seed=1),
        "sub/b.png": random_image(64, 96, seed=2),
        "sub/c.jpg": random_image(48, 80, seed=3),
    }
    for rel, img in paths.items():
        path = tmp_path / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(img) if rel.endswith(".jpg") else png_bytes(cv2.cvtColor(img, cv2.COLOR_RGB2BGR)))
    return tmp_path / "images"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_folder(root):
    """A real HTTP server on 127.0.0.1 serving `root`; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_root(tmp_path):
    """(folder, base_url): a real HTTP server on 127.0.0.1 serving `folder`."""
    root = tmp_path / "www"
    root.mkdir()
    with serve_folder(root) as url:
        yield root, url


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1; the AWS environment points boto3 at it, as a user would for MinIO."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage.s3_client.cache_clear()
    yield env["AWS_ENDPOINT_URL"]
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    storage.s3_client.cache_clear()
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    client = storage.s3_client()
    name = f"bucket-{os.urandom(4).hex()}"
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """A real local Ray with 2 CPUs, started after the S3 environment is set so workers inherit it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def post(url, body, content_type="application/json"):
    """(status, parsed JSON) of a POST; error statuses are answers too."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def write_label(path, label):
    """A gray PNG of class ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(np.asarray(label, np.uint8)))


def make_dataset(root, n_train=6, n_val=3, num_classes=3, size=(32, 48), seed=0, labels_txt=True):
    """A clean SegDataset: images/, annotations/, train.txt, val.txt and labels.txt."""
    rng = np.random.default_rng(seed)
    h, w = size
    for split, n in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(n):
            name = f"{split}_{i}"
            img = random_image(h, w, seed=seed * 100 + i + (50 if split == "val" else 0))
            label = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
            label[:2, :] = 255  # an ignored border
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "images" / f"{name}.jpg").write_bytes(jpeg_bytes(img))
            write_label(root / "annotations" / f"{name}.png", label)
            lines.append(f"images/{name}.jpg annotations/{name}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    if labels_txt:
        (root / "labels.txt").write_text("".join(f"c{i}\n" for i in range(num_classes)))
    return root
