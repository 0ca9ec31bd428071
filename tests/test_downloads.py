"""Official weights downloads (raysegment/downloads.py) against a real HTTP server on 127.0.0.1 that
serves folders packed as PaddleX packs them, and one that breaks transfers off."""

import contextlib
import http.server
import io
import os
import tarfile
import threading

import numpy as np
import paddle
import pytest
import yaml

import raysegment
from conftest import CLASS_NAMES, random_image
from raysegment.downloads import BASE_URL_ENV, DownloadError, fetch_file, official_model_dir
from raysegment.models import build_model, save_weights
from raysegment.train.loop import load_pretrained


def paddlex_archive(inference_dir, model_name="PP-LiteSeg-T"):
    """Bytes of `<model>_infer.tar` as PaddleX publishes it: one `<model>_infer/` folder holding
    inference.json, inference.pdiparams and an inference.yml without our label_list."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted(os.listdir(inference_dir)):
            path = os.path.join(inference_dir, name)
            if name == "inference.yml":
                with open(path) as f:
                    meta = yaml.safe_load(f)
                meta.pop("label_list")
                data = yaml.safe_dump(meta).encode()
                info = tarfile.TarInfo(f"{model_name}_infer/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.add(path, arcname=f"{model_name}_infer/{name}")
    return buf.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `files` {path: bytes}; a path in `cut` announces its whole length and sends half."""

    files, cut, hits = {}, set(), []

    def do_GET(self):
        self.hits.append(self.path)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if self.path in self.cut else data)
        if self.path in self.cut:
            self.close_connection = True

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def model_server(files, cut=()):
    handler = type("Handler", (_Handler,), {"files": files, "cut": set(cut), "hits": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mirror", handler.hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PADDLE_PDX_CACHE_HOME", str(tmp_path / "pdx"))
    return tmp_path / "pdx"


def test_create_model_without_model_dir_downloads_the_official_folder(inference_dir, cache, monkeypatch):
    with model_server({"/mirror/PP-LiteSeg-T_infer.tar": paddlex_archive(inference_dir)}) as (base, hits):
        monkeypatch.setenv(BASE_URL_ENV, base)
        model = raysegment.create_model("PP-LiteSeg-T")
        target = official_model_dir("PP-LiteSeg-T")
        assert target == str(cache / "official_models" / "PP-LiteSeg-T")
        assert sorted(os.listdir(target)) == ["inference.json", "inference.pdiparams", "inference.yml"]
        img = random_image(64, 96, seed=3)
        (got,) = model.predict(img)
        (want,) = raysegment.create_model(model_dir=inference_dir).predict(img)
        np.testing.assert_array_equal(got["pred"], want["pred"])
        raysegment.create_model("PP-LiteSeg-T")  # cached: no second request
        assert hits == ["/mirror/PP-LiteSeg-T_infer.tar"]
    assert [p for p in os.listdir(cache / "official_models") if not p.endswith(".lock")] == ["PP-LiteSeg-T"]


@pytest.mark.parametrize("case", ["corrupt", "not_a_model", "missing", "interrupted", "offline"])
def test_failed_downloads_say_why_and_leave_the_cache_empty(case, inference_dir, cache, monkeypatch):
    archive = paddlex_archive(inference_dir)
    files = {"/mirror/PP-LiteSeg-T_infer.tar": {
        "corrupt": archive[:1000] + b"\x00garbage" * 100,  # a header, then noise
        "not_a_model": tarfile_of({"notes/readme.txt": b"hello"}),
        "interrupted": archive,
    }.get(case)}
    if case == "missing":
        files = {}
    expected = {
        "corrupt": "not a readable tar archive",
        "not_a_model": "does not hold a usable inference folder",
        "missing": r"HTTP 404.*check the model name or the base URL",
        "interrupted": rf"broke off after {len(archive) // 2} of {len(archive)} bytes; run again",
        "offline": f"cannot reach .*offline\\? set {BASE_URL_ENV} to a mirror",
    }[case]
    with model_server(files, cut=["/mirror/PP-LiteSeg-T_infer.tar"] if case == "interrupted" else ()) as (base, _):
        if case == "offline":
            base = "http://127.0.0.1:9/mirror"  # the discard port: nothing listens
        monkeypatch.setenv(BASE_URL_ENV, base)
        with pytest.raises(DownloadError, match=expected):
            raysegment.create_model("PP-LiteSeg-T")
    folder = cache / "official_models"
    assert not folder.exists() or [p for p in os.listdir(folder) if not p.endswith(".lock")] == []


def tarfile_of(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_pretrain_weight_url_is_downloaded_once_and_loaded(tmp_path, cache):
    paddle.seed(3)
    source = build_model("PP-LiteSeg-T", num_classes=len(CLASS_NAMES))
    save_weights(source, str(tmp_path / "w.pdparams"))
    data = (tmp_path / "w.pdparams").read_bytes()
    with model_server({"/mirror/w.pdparams": data}, cut=["/mirror/cut.pdparams"]) as (base, hits):
        net = build_model("PP-LiteSeg-T", num_classes=len(CLASS_NAMES))
        assert load_pretrained(net, f"{base}/w.pdparams", net.classifier_prefixes) == "full model"
        for name, value in source.state_dict().items():
            np.testing.assert_array_equal(net.state_dict()[name].numpy(), value.numpy())
        assert fetch_file(f"{base}/w.pdparams") == str(cache / "pretrained" / "w.pdparams")
        assert hits == ["/mirror/w.pdparams"]
        with pytest.raises(DownloadError, match="HTTP 404"):
            load_pretrained(net, f"{base}/nothing.pdparams", net.classifier_prefixes)
    assert sorted(p for p in os.listdir(cache / "pretrained") if not p.endswith(".lock")) == ["w.pdparams"]
