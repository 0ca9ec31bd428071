"""The Ray Serve app: one deployment (`Segmenter`) whose replicas each hold the shared Predictor
and answer PaddleX's serving protocol (protocol.py). `build_app(args)` is what a Serve config's
`import_path: raysegment.serve:build_app` calls; nothing starts at import.
"""

import asyncio
import base64
import logging
import os
import re
import time
import uuid
import weakref

import orjson

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from ray import serve
from starlette.exceptions import HTTPException

from ..config import ServeOptions, parse_options
from ..data.image import encode_image
from ..data.pdf import is_pdf
from ..data.labels import PALETTE
from ..data.visualize import colorize
from ..infer.model_files import read_model_folder
from ..telemetry import service as service_metrics
from ..ray_env import Cluster, Placement, init_ray, serve_replicas
from .protocol import (RequestError, decode, envelope, image_bytes, json_response, mask_fields, media_type,
                       parse_target_size, read_body, render_pdf)

log = logging.getLogger(__name__)
api = FastAPI(title="raysegment", docs_url=None, redoc_url=None)


@api.middleware("http")
async def _measured(request, call_next):
    """Every answer counted by route, model and status, and timed (raysegment/telemetry.py)."""
    started, status = time.perf_counter(), 500  # an unexpected error is answered 500 outside this middleware
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        route = request.scope.get("route")
        tags = {"route": getattr(route, "path", None) or "unmatched", "model": getattr(request.state, "model", None) or "default"}
        metrics = service_metrics()
        metrics.requests.inc(1, {**tags, "status": str(status)})
        metrics.request_seconds.observe(time.perf_counter() - started, tags)


@api.exception_handler(RequestError)
async def _request_error(request, exc):
    return envelope(exc.status, exc.message)


@api.exception_handler(HTTPException)
async def _http_error(request, exc):  # unknown route, wrong method
    return envelope(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")


@api.exception_handler(Exception)
async def _unexpected(request, exc):
    log.exception("unexpected error on %s", request.url.path)
    return envelope(500, f"internal error ({type(exc).__name__}); the request was not processed")


@serve.deployment
@serve.ingress(api)
class Segmenter:
    """One Predictor per replica; concurrent requests share forward passes (dynamic batching)."""

    def __init__(self, opts: ServeOptions, placement: Placement):
        from ..infer import Predictor  # Paddle and the engines load in the replica, not in the driver

        self.opts = o = opts  # parsed and checked once, by build_app; the placement sized there too

        def load(folder):
            return Predictor.load(folder, o, placement.compute_device, placement.threads)

        self.predictor = load(o.model_dir)  # the default model: PaddleX's routes without a model id
        self.models = dict(o.models or {})

        async def open_model(model_id):  # one per replica, least recently used dropped past the limit
            return await asyncio.to_thread(load, self.models[model_id])

        # wired per instance so the limit comes from the options; Serve detects it on the instance
        # and routes requests with a model id to replicas that hold that model
        self.open_model = serve.multiplexed(max_num_models_per_replica=o.max_models_per_replica)(open_model)
        self.device = placement.device
        self._page = self._ui_page() if o.ui else None
        # model ("default" or its id) -> its Predictor while loaded, for the engine gauge: a model the
        # multiplexer evicted drops out by itself
        self._served = weakref.WeakValueDictionary()
        self.segment.set_max_batch_size(o.max_batch_size)
        self.segment.set_batch_wait_timeout_s(o.batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # the real values are set in __init__
    async def segment(self, items):
        """[(rgb, target_size, model id or "", time queued)] -> label maps; the forward runs off the
        event loop, so requests keep arriving (and decoding) while it computes. A batch is split by
        model (and target size): only requests for the same model share a forward pass."""
        predictors = {m: await self.predictor_for(m) for m in {item[2] for item in items}}
        return await asyncio.to_thread(self._predict, items, predictors)

    def _predict(self, items, predictors):
        masks, groups, metrics = [None] * len(items), {}, service_metrics()
        for i, (_, size, model_id, _) in enumerate(items):
            groups.setdefault((model_id, size), []).append(i)
        for (model_id, size), idx in groups.items():
            started = time.perf_counter()
            predictor = predictors[model_id]
            for i, mask in zip(idx, predictor.predict([items[i][0] for i in idx], target_size=size)):
                masks[i] = mask
            model = model_id or "default"
            metrics.segmented(model, [masks[i] for i in idx], [started - items[i][3] for i in idx], time.perf_counter() - started)
            self._served[model] = predictor
            metrics.engine.set(1, {"model": model, "engine": predictor.engine.run_mode})
        return masks

    def check_health(self):
        """Serve calls this every health_check_period_s (10 s): the engine gauge is set again, since
        Ray drops a gauge no process has set for two export intervals, and an idle replica still
        holds its models' engines."""
        engine = service_metrics().engine
        for model, predictor in list(self._served.items()):
            engine.set(1, {"model": model, "engine": predictor.engine.run_mode})

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
        content_type = media_type(request)
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
        content_type = media_type(request)
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
        model_id = request.state.model = self.model_id(path_id, body.get("model"))
        visualize = body.get("visualize")
        if visualize is not None and not isinstance(visualize, bool):
            raise RequestError(422, "field 'visualize' must be true, false or null")
        target_size = parse_target_size(body.get("targetSize"))
        data = await asyncio.to_thread(image_bytes, body["image"], self.opts)
        if is_pdf(data=data):
            raise RequestError(415, "field 'image' holds a PDF; /semantic-segmentation takes one image: POST the PDF's "
                                    "bytes to /predict (Content-Type: application/pdf), which segments every page")
        rgb = await asyncio.to_thread(decode, data, self.opts)
        mask = await self.segment((rgb, target_size, model_id, time.perf_counter()))
        vis = None
        if visualize if visualize is not None else self.opts.visualize:
            vis = base64.b64encode(encode_image(colorize(mask))).decode()
        result = {"labelMap": mask.ravel(), "size": list(mask.shape), "image": vis}
        return await asyncio.to_thread(json_response, {"logId": str(uuid.uuid4()), "errorCode": 0, "errorMsg": "Success", "result": result})

    @api.post("/predict")
    async def predict(self, request: Request):
        return await self._predict_raw(request, None)

    @api.post("/models/{model_id}/predict")
    async def model_predict(self, model_id: str, request: Request):
        return await self._predict_raw(request, model_id)

    async def _predict_raw(self, request, path_id):
        model_id = request.state.model = self.model_id(path_id)
        data = await self._bytes_from_request(request)
        predictor = await self.predictor_for(model_id)
        names = predictor.class_names
        head = {"logId": str(uuid.uuid4()), "model": predictor.model_name, "model_id": model_id or None, "class_names": names}
        if is_pdf(data=data):  # every page, each a request to the batcher, answered together
            pages = await asyncio.to_thread(render_pdf, data, self.opts)
            masks = await asyncio.gather(*(self.segment((rgb, None, model_id, time.perf_counter())) for rgb in pages))
            return json_response({**head, "engine": predictor.engine.run_mode,
                                  "pages": [{"page_index": i, **mask_fields(m, names)} for i, m in enumerate(masks)]})
        mask = await self.segment((await asyncio.to_thread(decode, data, self.opts), None, model_id, time.perf_counter()))
        return json_response({**head, "engine": predictor.engine.run_mode, **mask_fields(mask, names)})

    @api.get("/")
    async def home(self, request: Request):
        if not self.opts.ui:
            raise HTTPException(404, "Not Found (the web page is off: ui false)")
        return RedirectResponse(f"{request.scope.get('root_path', '')}/ui")  # under the app's route prefix

    @api.get("/ui")
    async def ui(self):
        """The web page: upload an image or PDF (or give a URL the policy allows), see the mask over
        it. It calls /predict and /semantic-segmentation as any client does."""
        if not self.opts.ui:
            raise HTTPException(404, "Not Found (the web page is off: ui false)")
        return HTMLResponse(self._page)

    def _ui_page(self):
        folders = {"": self.opts.model_dir, **self.models}
        config = {"palette": PALETTE[:256].tolist(), "models": list(folders), "model_name": self.predictor.model_name,
                  "class_names": {m: read_model_folder(f).class_names for m, f in folders.items()},
                  "allow_urls": self.opts.allow_url_inputs}
        with open(os.path.join(os.path.dirname(__file__), "ui.html"), encoding="utf-8") as f:
            return f.read().replace("/*CONFIG*/null", orjson.dumps(config).decode().replace("</", "<\\/"))

    @api.get("/health")
    async def health(self):
        return json_response({"logId": str(uuid.uuid4()), "errorCode": 0, "errorMsg": "Healthy"})

    @api.get("/ready")
    async def ready(self):
        o = self.opts
        return json_response({"ready": True, "model": self.predictor.model_name, "model_dir": o.model_dir,
                      "class_names": self.predictor.class_names, "device": self.device,
                      "run_mode": self.predictor.engine.run_mode, "run_mode_reason": self.predictor.engine.reason,
                      "engine_reasons": self.predictor.engine.reasons, "models": sorted(self.models),
                      "max_batch_size": o.max_batch_size, "batch_wait_timeout_s": o.batch_wait_timeout_s})


APP_IMPORT_PATH = "raysegment.serve:build_app"


def build_app(args=None):
    """The Serve application for `args` (ServeOptions keys; what configs/serve.yaml's `args` holds):
    what Serve's CLI calls, through APP_IMPORT_PATH."""
    return app_for(parse_options(ServeOptions, args, "args"))


@serve.deployment
class PlannedReplica:
    """A dry run's stand-in for Segmenter (raysegment/dry_run.py), deployed with the same options:
    it reports what it was given and what its Predictor would run (Predictor.plan), and loads nothing."""

    def __init__(self, opts: ServeOptions, placement: Placement, reports):
        from ..dry_run import process_view
        from ..infer import Predictor

        reports.put({**process_view(), **Predictor.plan(opts.model_dir, opts, placement.compute_device, placement.threads)})


def replicas(opts):
    """The replicas' Placement for checked ServeOptions, sized to the cluster (unset counts and CPUs
    chosen, a set value that cannot fit refused) before anything deploys."""
    return serve_replicas(opts, Cluster.of(init_ray()))


def app_for(opts):
    """The Serve application for checked ServeOptions. A Serve config's own `deployments:` entries
    still override the count, resources and limits, as Serve does."""
    check_folders(opts)
    return deployment(opts, replicas(opts), Segmenter)


def deployment(opts, placement, replica, *extra):
    """`replica` deployed with the options' count (or autoscaling), the placement's resources and
    the options' limits, bound to (opts, placement, *extra)."""
    scaling = {"autoscaling_config": opts.autoscaling} if opts.autoscaling else {"num_replicas": placement.count}
    deployment = replica.options(max_ongoing_requests=opts.max_ongoing_requests, max_queued_requests=opts.max_queued_requests,
                                 backpressure_config={"status_code": 503, "retry_after_s": opts.retry_after_s},
                                 **scaling, ray_actor_options=placement.ray_options)
    return deployment.bind(opts, placement, *extra)


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
