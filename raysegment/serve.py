"""Ray Serve app: HTTP <-> the shared Predictor, in PaddleX's serving protocol.

    serve run configs/serve.yaml
    python jobs/serve.py --model-dir MODEL [--host 127.0.0.1] [--port 8000]

    POST /semantic-segmentation  {"image": base64 or http(s) URL, "targetSize": -1 | N | [w, h], "visualize": bool}
        -> {"logId", "errorCode": 0, "errorMsg": "Success",
            "result": {"labelMap": [h*w ints, row-major], "size": [h, w], "image": base64 JPEG or null}}
    POST /predict  raw image bytes (image/* or application/octet-stream), or multipart/form-data
                   with the image in field "file"
        -> {"logId", "width", "height", "model", "class_names", "pixel_counts",
            "mask": {"encoding": "png+base64", "shape": [h, w], "data": ...}}
                   a PDF (application/pdf, or any of the above holding PDF bytes): each page rendered
        -> {"logId", "model", "class_names", "pages": [{"page_index", "width", "height", "pixel_counts", "mask"}]}
    GET  /health   {"logId", "errorCode": 0, "errorMsg": "Healthy"}, as PaddleX answers
    GET  /ready    the model, its classes, device and batching

Every error keeps the envelope {"logId", "errorCode": <HTTP status>, "errorMsg": <what and what to
do>}: 4xx for a bad request, and the replica carries on. `build_app(args)` makes the application;
nothing starts at import.
"""

import asyncio
import base64
import binascii
import dataclasses
import ipaddress
import logging
import os
import re
import socket
import uuid
from urllib.parse import urlparse

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve
from starlette.exceptions import HTTPException

from . import storage
from .config import ServeOptions, parse_options
from .data.image import ImageError, ImageTooLarge, decode_image, encode_image
from .data.labels import encode_label_png, pixel_counts
from .data.pdf import is_pdf, render_pages
from .data.visualize import colorize
from .infer.model_files import read_model_folder
from .ray_env import Cluster, Placement, init_ray, serve_replicas

log = logging.getLogger(__name__)
api = FastAPI(title="raysegment", docs_url=None, redoc_url=None)
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


class RequestError(Exception):
    """A bad request: answered with `status` and `message` in the envelope."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def _json(payload, status=200):
    # orjson writes a numpy label map straight to JSON text: ~100x faster than .tolist() + json
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type="application/json")


def _envelope(status, message):
    return _json({"logId": str(uuid.uuid4()), "errorCode": status, "errorMsg": message}, status)


@api.exception_handler(RequestError)
async def _request_error(request, exc):
    return _envelope(exc.status, exc.message)


@api.exception_handler(HTTPException)
async def _http_error(request, exc):  # unknown route, wrong method
    return _envelope(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")


@api.exception_handler(Exception)
async def _unexpected(request, exc):
    log.exception("unexpected error on %s", request.url.path)
    return _envelope(500, f"internal error ({type(exc).__name__}); the request was not processed")


def _content_type(request):
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request, limit):
    """The request body, refused with 413 as soon as it passes `limit` bytes (Serve's proxy has no
    body limit of its own, and a chunked body has no Content-Length to check first)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request body is {declared} bytes, over this service's limit of {limit} (max_body_bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request body is over this service's limit of {limit} bytes (max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def check_url(url, opts):
    """Refuse a URL input unless URL inputs are on, it is http(s), its host is allowlisted and it
    does not resolve to a link-local (cloud metadata) address."""
    if not opts.allow_url_inputs:
        raise RequestError(403, "URL inputs are off on this service; send the image as base64 "
                                "(or start the service with allow_url_inputs and a url_allowlist)")
    parsed = urlparse(url)
    host = (parsed.hostname or "").lower()
    netloc = f"{host}:{parsed.port}" if parsed.port else host
    if not host or (host not in opts.url_allowlist and netloc not in opts.url_allowlist):
        raise RequestError(403, f"URL host {netloc or '(none)'!r} is not in this service's url_allowlist")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, parsed.port or 80)}
    except OSError:
        raise RequestError(400, f"URL host {host!r} does not resolve") from None
    if any(ipaddress.ip_address(a.split("%")[0]).is_link_local for a in addresses):
        raise RequestError(403, f"URL host {host!r} resolves to a link-local address; those are never fetched")


def image_bytes(field, opts):
    """PaddleX's `image` field: an http(s) URL or base64 bytes."""
    if not isinstance(field, str) or not field:
        raise RequestError(422, "field 'image' must be a non-empty string: base64 image bytes or an http(s) URL")
    scheme = _SCHEME.match(field)
    if scheme and scheme.group(1).lower() in ("http", "https"):
        check_url(field, opts)
        try:
            return storage.read_url(field, max_bytes=opts.max_body_bytes, follow_redirects=False, timeout=10)
        except storage.StorageError as e:
            raise RequestError(400, f"cannot fetch the image URL: {e}") from None
    if scheme and len(scheme.group(1)) > 1:  # one letter would be a Windows drive; both are refused
        raise RequestError(403, f"{scheme.group(1)}: URLs are not accepted; send base64 image bytes or an http(s) URL")
    try:
        return base64.b64decode(field, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "field 'image' is neither valid base64 nor an http(s) URL; "
                                "send the file's bytes base64-encoded") from None


def decode(data, opts):
    try:
        return decode_image(data, name="the image", max_pixels=opts.max_image_pixels)
    except ImageTooLarge as e:
        raise RequestError(413, f"the image has {e.pixels} pixels, over this service's limit of {e.limit} "
                                "(max_image_pixels); send a smaller image") from None
    except ImageError as e:
        raise RequestError(400, str(e)) from None


def render_pdf(data, opts):
    try:
        return render_pages(data, name="the PDF", max_pixels=opts.max_image_pixels)
    except ImageError as e:
        raise RequestError(400, str(e)) from None


def _mask_fields(mask, names):
    h, w = mask.shape
    return {"width": w, "height": h, "pixel_counts": pixel_counts(mask, names),
            "mask": {"encoding": "png+base64", "shape": [h, w], "data": base64.b64encode(encode_label_png(mask)).decode()}}


def parse_target_size(value):
    from .infer.predictor import check_target_size

    if isinstance(value, list):
        value = tuple(value)
    try:
        return check_target_size(value)
    except (ValueError, TypeError) as e:
        raise RequestError(422, f"field 'targetSize': {e}") from None


@serve.deployment
@serve.ingress(api)
class Segmenter:
    """One Predictor per replica; concurrent requests share forward passes (dynamic batching)."""

    def __init__(self, options, placement):
        from .infer import Predictor
        from .infer.predictor import check_slide

        self.opts = o = parse_options(ServeOptions, options, "args")
        placement = Placement(**placement)  # sized by build_app against the cluster
        engine, slide = o.engine_spec(placement.threads), check_slide(o.slide_window, o.slide_stride)

        def load(folder):
            return Predictor.load(folder, device=placement.device, target_size=o.target_size, engine=engine, slide=slide)

        self.predictor = load(o.model_dir)  # the default model: PaddleX's routes without a model id
        self.models = dict(o.models or {})

        async def open_model(model_id):  # one per replica, least recently used dropped past the limit
            return await asyncio.to_thread(load, self.models[model_id])

        # wired per instance so the limit comes from the options; Serve detects it on the instance
        # and routes requests with a model id to replicas that hold that model
        self.open_model = serve.multiplexed(max_num_models_per_replica=o.max_models_per_replica)(open_model)
        self.device = placement.device
        self.segment.set_max_batch_size(o.max_batch_size)
        self.segment.set_batch_wait_timeout_s(o.batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # the real values are set in __init__
    async def segment(self, items):
        """[(rgb, target_size, model id or "")] -> label maps; the forward runs off the event loop,
        so requests keep arriving (and decoding) while it computes. A batch is split by model
        (and target size): only requests for the same model share a forward pass."""
        predictors = {m: await self.predictor_for(m) for m in {m for _, _, m in items}}
        return await asyncio.to_thread(self._predict, items, predictors)

    def _predict(self, items, predictors):
        masks = [None] * len(items)
        groups = {}
        for i, (_, size, model_id) in enumerate(items):
            groups.setdefault((model_id, size), []).append(i)
        for (model_id, size), idx in groups.items():
            for i, mask in zip(idx, predictors[model_id].predict([items[i][0] for i in idx], target_size=size)):
                masks[i] = mask
        return masks

    def model_id(self, path_id=None, field=None):
        """The model a request asks for: /models/<id>/..., a "model" field, or the
        serve_multiplexed_model_id header; "" for the default model. An id the operator did not
        list is a 404 (a client never names a folder)."""
        model_id = path_id or field or serve.get_multiplexed_model_id()
        if model_id and model_id not in self.models:
            listed = ", ".join(sorted(self.models)) or "none: this service serves its default model only"
            raise RequestError(404, f"model {model_id!r} is not served here; served model ids: {listed}")
        return model_id or ""

    async def predictor_for(self, model_id):
        return await self.open_model(model_id) if model_id else self.predictor

    async def _bytes_from_request(self, request):
        content_type = _content_type(request)
        if content_type == "multipart/form-data":
            body = await read_body(request, self.opts.max_body_bytes)

            async def replay():  # the stream is consumed: hand the form parser the body read above
                return {"type": "http.request", "body": body, "more_body": False}

            form = await Request(request.scope, replay).form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise RequestError(422, "multipart request has no file field named 'file'; send the image as file=@image.jpg")
            data = await upload.read()
        elif content_type.startswith("image/") or content_type in ("application/pdf", "application/octet-stream"):
            data = await read_body(request, self.opts.max_body_bytes)
        else:
            raise RequestError(415, f"content type {content_type or '(none)'!r} is not accepted here; send the image (or PDF) "
                                    "bytes as image/*, application/pdf or application/octet-stream, or multipart/form-data "
                                    "with a 'file' field")
        return data

    @api.post("/semantic-segmentation")
    async def semantic_segmentation(self, request: Request):
        return await self._semantic_segmentation(request, None)

    @api.post("/models/{model_id}/semantic-segmentation")
    async def model_semantic_segmentation(self, model_id: str, request: Request):
        return await self._semantic_segmentation(request, model_id)

    async def _semantic_segmentation(self, request, path_id):
        content_type = _content_type(request)
        if content_type != "application/json":
            raise RequestError(415, f"content type {content_type or '(none)'!r}: send a JSON body (application/json) "
                                    "with an 'image' field")
        try:
            body = orjson.loads(await read_body(request, self.opts.max_body_bytes))
        except orjson.JSONDecodeError as e:
            raise RequestError(422, f"the body is not valid JSON ({e})") from None
        if not isinstance(body, dict) or "image" not in body:
            raise RequestError(422, "the body must be a JSON object with an 'image' field (base64 or URL)")
        unknown = set(body) - {"image", "targetSize", "visualize", "model"}
        if unknown:
            raise RequestError(422, f"unknown field(s) {', '.join(sorted(unknown))}; accepted: image, targetSize, visualize, model")
        if body.get("model") is not None and not isinstance(body["model"], str):
            raise RequestError(422, "field 'model' must be a model id (a string)")
        model_id = self.model_id(path_id, body.get("model"))
        visualize = body.get("visualize")
        if visualize is not None and not isinstance(visualize, bool):
            raise RequestError(422, "field 'visualize' must be true, false or null")
        target_size = parse_target_size(body.get("targetSize"))
        data = await asyncio.to_thread(image_bytes, body["image"], self.opts)
        if is_pdf(data=data):
            raise RequestError(415, "field 'image' holds a PDF; /semantic-segmentation takes one image: POST the PDF's "
                                    "bytes to /predict (Content-Type: application/pdf), which segments every page")
        rgb = await asyncio.to_thread(decode, data, self.opts)
        mask = await self.segment((rgb, target_size, model_id))
        vis = None
        if visualize if visualize is not None else self.opts.visualize:
            vis = base64.b64encode(encode_image(colorize(mask))).decode()
        result = {"labelMap": mask.ravel(), "size": list(mask.shape), "image": vis}
        return await asyncio.to_thread(_json, {"logId": str(uuid.uuid4()), "errorCode": 0, "errorMsg": "Success", "result": result})

    @api.post("/predict")
    async def predict(self, request: Request):
        return await self._predict_raw(request, None)

    @api.post("/models/{model_id}/predict")
    async def model_predict(self, model_id: str, request: Request):
        return await self._predict_raw(request, model_id)

    async def _predict_raw(self, request, path_id):
        model_id = self.model_id(path_id)
        data = await self._bytes_from_request(request)
        predictor = await self.predictor_for(model_id)
        names = predictor.class_names
        head = {"logId": str(uuid.uuid4()), "model": predictor.model_name, "model_id": model_id or None, "class_names": names}
        if is_pdf(data=data):  # every page, each a request to the batcher, answered together
            pages = await asyncio.to_thread(render_pdf, data, self.opts)
            masks = await asyncio.gather(*(self.segment((rgb, None, model_id)) for rgb in pages))
            return _json({**head, "pages": [{"page_index": i, **_mask_fields(m, names)} for i, m in enumerate(masks)]})
        mask = await self.segment((await asyncio.to_thread(decode, data, self.opts), None, model_id))
        return _json({**head, **_mask_fields(mask, names)})

    @api.get("/health")
    async def health(self):
        return _json({"logId": str(uuid.uuid4()), "errorCode": 0, "errorMsg": "Healthy"})

    @api.get("/ready")
    async def ready(self):
        o = self.opts
        return _json({"ready": True, "model": self.predictor.model_name, "model_dir": o.model_dir,
                      "class_names": self.predictor.class_names, "device": self.device,
                      "run_mode": self.predictor.engine.run_mode, "run_mode_reason": self.predictor.engine.reason,
                      "engine_reasons": self.predictor.engine.reasons, "models": sorted(self.models),
                      "max_batch_size": o.max_batch_size, "batch_wait_timeout_s": o.batch_wait_timeout_s})


def build_app(args=None):
    """The Serve application for `args` (ServeOptions keys; what configs/serve.yaml's `args` holds).
    Replica count, autoscaling and resources come from the same args; a Serve config's own
    `deployments:` entries still override them, as Serve does."""
    opts = check_folders(parse_options(ServeOptions, args, "args"))
    if opts.max_ongoing_requests < opts.max_batch_size:
        raise ValueError(f"args.max_ongoing_requests ({opts.max_ongoing_requests}) is below args.max_batch_size "
                         f"({opts.max_batch_size}): batches could never fill; raise it")
    # sized to the cluster (unset counts and CPUs chosen, a set value that cannot fit refused) before anything deploys
    placement = serve_replicas(opts, Cluster.of(init_ray()))
    scaling = {"autoscaling_config": opts.autoscaling} if opts.autoscaling else {"num_replicas": placement.count}
    deployment = Segmenter.options(max_ongoing_requests=opts.max_ongoing_requests, **scaling,
                                   ray_actor_options=placement.ray_options)
    return deployment.bind(dataclasses.asdict(opts), dataclasses.asdict(placement))


def check_folders(opts):
    """`opts` with model_dir and every args.models folder checked as a model folder (a folder that is
    none is refused here, not in a replica) and made absolute (replicas may start elsewhere)."""
    if not opts.model_dir:
        raise ValueError("args.model_dir is not set: pass the exported inference folder (or checkpoint) to serve")
    if not os.path.isdir(opts.model_dir):
        raise ValueError(f"args.model_dir {opts.model_dir!r} is not a folder; pass an exported inference folder or checkpoint")
    read_model_folder(opts.model_dir)
    opts.model_dir = os.path.abspath(opts.model_dir)
    if opts.models is not None:
        opts.models = _checked_models(opts.models)
    return opts


MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _checked_models(models):
    """args.models: {model id: folder}, ids usable in a header and a URL path, folders that exist."""
    checked = {}
    for model_id, folder in models.items():
        if not isinstance(model_id, str) or not MODEL_ID.match(model_id):
            raise ValueError(f"args.models: model id {model_id!r} must be letters, digits, '.', '_' or '-' (used in URLs and headers)")
        if not isinstance(folder, str) or not os.path.isdir(folder):
            raise ValueError(f"args.models.{model_id}: {folder!r} is not a folder; give each id an exported inference folder or checkpoint")
        try:
            read_model_folder(folder)
        except ValueError as e:
            raise ValueError(f"args.models.{model_id}: {e}") from None
        checked[model_id] = os.path.abspath(folder)
    return checked


def load_serve_config(path=None, overrides=(), **flags):
    """ServeOptions from a Serve config file (its one application's `args`, plus host, port and
    request_timeout_s from `http_options`), then `key=value` overrides, then flags not None."""
    import yaml

    args = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.safe_load(f) or {}
        except OSError as e:
            raise ValueError(f"Serve config {path!r} cannot be read: {e.strerror or e}") from None
        apps = [a for a in raw.get("applications") or [] if a.get("import_path") == "raysegment.serve:build_app"]
        if len(apps) != 1:
            raise ValueError(f"Serve config {path!r} must hold one application with import_path raysegment.serve:build_app")
        args = dict(apps[0].get("args") or {})
        http = raw.get("http_options") or {}
        args.update({k: http[k] for k in ("host", "port", "request_timeout_s") if k in http})
    args.update({k: v for k, v in flags.items() if v is not None})
    return parse_options(ServeOptions, args, "args", overrides)


def serve_forever(opts, ray_address=None, what=None, name="segmentation"):
    """Deploy the app for `opts` and keep it up until Ctrl-C or SIGTERM, then delete it (a local Ray
    this process started goes with the process)."""
    import signal
    import time

    check_folders(opts)  # before Ray starts
    init_ray(ray_address, worker_logs=False)  # replicas' access logs stay in Ray's log files
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve's start-up chatter; our own line says where
    stop = []
    # after ray.init, whose own SIGTERM handler would replace an earlier one; before deploying, so a
    # SIGTERM that comes as soon as the service answers is ours
    signal.signal(signal.SIGTERM, lambda *_: stop.append("SIGTERM"))
    url = start(opts, ray_address=ray_address, name=name)
    print(f"serving {what or opts.model_dir} at {url} (POST /semantic-segmentation, POST /predict, GET /ready); "
          "Ctrl-C stops", flush=True)
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        stop.append("Ctrl-C")
    finally:
        # the app only: serve.shutdown() would also stop Serve itself, which on a shared cluster serves
        # other apps, and on a local Ray makes its controller's last call fail loudly as it exits
        serve.delete(name)
    print(f"{stop[0] if stop else 'stopped'}: service shut down", flush=True)


def start(opts, ray_address=None, name="segmentation", route_prefix="/"):
    """Deploy the app for `opts` (ServeOptions) on Ray (connecting or starting a local one) with
    its HTTP proxy on opts.host:opts.port; returns the base URL. `serve.delete(name)` stops it. A
    replica that fails to start is a ValueError with the replica's own message."""
    init_ray(ray_address)
    serve.start(http_options={"host": opts.host, "port": opts.port, "request_timeout_s": opts.request_timeout_s})
    try:
        serve.run(build_app(dataclasses.asdict(opts)), name=name, route_prefix=route_prefix)
    except RuntimeError as e:  # "Deploying application ... failed": the reason is in the app's status
        raise ValueError(_deploy_failure(name) or str(e)) from None
    return f"http://{opts.host}:{opts.port}"


def _deploy_failure(name):
    """The last line of the failing replica's traceback, as Serve's status keeps it, or None."""
    app = serve.status().applications.get(name)
    if app is None:
        return None
    messages = [d.message for d in app.deployments.values() if d.message] + [app.message]
    lines = [line.strip() for m in messages for line in m.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    return f"the service did not start: {errors[-1] if errors else lines[-1] if lines else 'no reason given'}"
