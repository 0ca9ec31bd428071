"""Expand what a user passes to `predict` or the bulk job into single inputs, lazily.

An input is an ndarray (predict only), a file path, a directory (its images and PDFs, recursively, sorted),
a glob, a text file of URIs, an http(s) URL, an s3:// URI or prefix, or a list of those.
"""

import glob
import os

import numpy as np

from .. import storage
from .image import ImageError, decode_image, to_rgb8
from .pdf import is_pdf, render_pages

LIST_SUFFIXES = (".txt", ".lst")


def _rel_for_url(url):
    """'http://host:8000/a/b.jpg?x=1' -> 'host_8000/a/b.jpg' (what urlparse's netloc + path give,
    split by hand: urlparse took 10 of the 40 s a million URLs took to plan)."""
    rest = url.split("://", 1)[1].split("#", 1)[0].split("?", 1)[0]
    netloc, _, path = rest.partition("/")
    return f"{netloc.replace(':', '_')}/{path}".strip("/") or "url"


def list_inputs(inputs):
    """Yield {"uri", "rel"} for every image: local folders (recursive), globs, files, text files of
    URIs (.txt/.lst, one a line), s3:// prefixes or keys and http(s) URLs, or a list of these.
    `rel` is the path under the input root that the outputs mirror."""
    for spec in [inputs] if isinstance(inputs, str) else inputs:
        if storage.is_url(spec):
            yield {"uri": spec, "rel": _rel_for_url(spec)}
        elif storage.is_s3(spec):
            if storage.is_input_name(spec):
                yield {"uri": spec, "rel": spec.rsplit("/", 1)[-1]}
            else:
                prefix = spec.rstrip("/") + "/"
                for uri in storage.iter_inputs(prefix):
                    yield {"uri": uri, "rel": uri[len(prefix):]}
        elif spec.lower().endswith(LIST_SUFFIXES) and os.path.isfile(spec):
            for line in storage.iter_lines(spec):  # streamed: a list of a million URLs is never held whole
                if line.strip() and not line.lstrip().startswith("#"):
                    yield from list_inputs(line.strip())
        elif os.path.isdir(spec):
            for path in storage.iter_inputs(spec):
                yield {"uri": path, "rel": os.path.relpath(path, spec).replace(os.sep, "/")}
        elif any(c in spec for c in "*?["):
            root = spec[: min(spec.index(c) for c in "*?[" if c in spec)].rsplit("/", 1)[0] or "."
            for path in sorted(glob.glob(spec, recursive=True)):
                if storage.is_input_name(path):
                    yield {"uri": path, "rel": os.path.relpath(path, root).replace(os.sep, "/")}
        else:
            yield {"uri": spec, "rel": os.path.basename(spec)}  # a file; a missing one becomes an error row


def check_inputs(inputs):
    """Refuse, before any work starts, an input that can give nothing: a local path that does not
    exist, or a folder, glob, URL list or s3:// prefix with no images or PDFs in it. Each is
    listed up to its first input only."""
    for spec in [inputs] if isinstance(inputs, str) else inputs:
        local = not (storage.is_url(spec) or storage.is_s3(spec) or any(c in spec for c in "*?["))
        if local and not os.path.exists(spec):
            raise storage.StorageError(f"input {spec!r} does not exist; pass a folder, an image or PDF, a glob, a URL list "
                                       "(.txt), an s3:// prefix or an http(s) URL")
        if next(list_inputs(spec), None) is None:
            raise _nothing_in(spec)


def _nothing_in(spec):
    return storage.StorageError(f"input {spec!r} has no images or PDFs: looked for {', '.join(storage.INPUT_SUFFIXES)} "
                                "(names starting with '.' or '_' are skipped)")


def iter_inputs(inputs):
    """Yield (uri or None, item) where item is an ndarray or a uri still to be read: what
    `list_inputs` lists, plus arrays. A folder or prefix without images is an error here."""
    if isinstance(inputs, (str, os.PathLike, np.ndarray)):
        inputs = [inputs]
    for item in inputs:
        if isinstance(item, np.ndarray):
            yield None, item
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise ImageError(f"input {item!r} is a {type(item).__name__}; pass an ndarray, a path, a URL or an s3:// URI")
        found = False
        for entry in list_inputs(os.fspath(item)):
            found = True
            yield entry["uri"], entry["uri"]
        if not found:
            raise _nothing_in(os.fspath(item))


def load_pages(uri, item, max_pixels=None, max_bytes=None):
    """(uri, item) from iter_inputs -> [(page_index, (H, W, 3) uint8 RGB)]: one page (index None)
    for an image, every page (0, 1, ...) for a PDF. Arrays are taken as OpenCV gives them (BGR,
    BGRA or gray; 8 or 16 bit), as PaddleX takes them."""
    if isinstance(item, np.ndarray):
        return [(None, to_rgb8(item, name="array input", max_pixels=max_pixels))]
    data = storage.read_bytes(item, max_bytes=max_bytes)
    if is_pdf(uri, data):
        return list(enumerate(render_pages(data, name=uri, max_pixels=max_pixels)))
    return [(None, decode_image(data, name=uri, max_pixels=max_pixels))]
