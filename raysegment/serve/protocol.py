"""PaddleX's serving protocol, apart from Serve: reading a request, checking its fields, and the
JSON answers (every one in the envelope {"logId", "errorCode", "errorMsg", ...}).

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

An error is {"logId", "errorCode": <HTTP status>, "errorMsg": <what and what to do>}: 4xx for a bad
request, and the replica carries on.
"""

import base64
import binascii
import ipaddress
import re
import socket
import uuid
from urllib.parse import urlparse

import orjson
from fastapi.responses import Response

from .. import storage
from ..data.image import ImageError, ImageTooLarge, decode_image
from ..data.labels import encode_label_png, pixel_counts
from ..data.pdf import render_pages
from ..infer.options import check_target_size

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


class RequestError(Exception):
    """A bad request: answered with `status` and `message` in the envelope."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def json_response(payload, status=200):
    # orjson writes a numpy label map straight to JSON text: ~100x faster than .tolist() + json
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type="application/json")


def envelope(status, message):
    return json_response({"logId": str(uuid.uuid4()), "errorCode": status, "errorMsg": message}, status)


def media_type(request):
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


def mask_fields(mask, names):
    h, w = mask.shape
    return {"width": w, "height": h, "pixel_counts": pixel_counts(mask, names),
            "mask": {"encoding": "png+base64", "shape": [h, w], "data": base64.b64encode(encode_label_png(mask)).decode()}}


def parse_target_size(value):
    if isinstance(value, list):
        value = tuple(value)
    try:
        return check_target_size(value)
    except (ValueError, TypeError) as e:
        raise RequestError(422, f"field 'targetSize': {e}") from None
