"""Reading and writing bytes at local paths, http(s):// URLs and s3:// URIs: the one place that does I/O.

S3 goes through boto3 with the standard AWS configuration (environment, ~/.aws/config), including
`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` for MinIO or a moto server, so the same code talks to all.
"""

import contextlib
import fcntl
import functools
import os
import tempfile
import urllib.error
import urllib.request
from urllib.parse import urlparse

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
INPUT_SUFFIXES = IMAGE_SUFFIXES + (".pdf",)  # what prediction takes: images, and PDFs page by page
HTTP_TIMEOUT_S = 30
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class StorageError(OSError):
    pass


class NotFound(StorageError):
    """The key or file is not there (as opposed to a store that cannot be reached or read)."""


@contextlib.contextmanager
def file_lock(path):
    """An exclusive lock held by one process of this machine at a time (the file stays)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_url(uri):
    return isinstance(uri, str) and uri.startswith(("http://", "https://"))


def is_s3(uri):
    return isinstance(uri, str) and uri.startswith("s3://")


def is_input_name(name):
    return name.lower().endswith(INPUT_SUFFIXES)


@functools.cache
def s3_client():
    import boto3  # late: only S3 users pay for the import

    return boto3.client("s3")


S3_SETTINGS = ("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL "
               "for MinIO or another S3-compatible store")


@contextlib.contextmanager
def s3_errors(uri):
    """botocore's exceptions -> one StorageError line naming the object, the endpoint and the settings
    to check (NotFound for a missing key)."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    try:
        yield
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404"):
            raise NotFound(f"{uri} does not exist") from None
        raise StorageError(f"S3 refused {uri} ({code or e}) at {_endpoint()}; check {S3_SETTINGS}") from None
    except NoCredentialsError:
        raise StorageError(f"no AWS credentials to read or write {uri} at {_endpoint()}; set {S3_SETTINGS}") from None
    except EndpointConnectionError:
        raise StorageError(f"cannot reach the S3 endpoint {_endpoint()} for {uri}; check AWS_ENDPOINT_URL "
                           "(or AWS_ENDPOINT_URL_S3) and that the store is up") from None
    except BotoCoreError as e:
        raise StorageError(f"S3 error on {uri} at {_endpoint()}: {e}; check {S3_SETTINGS}") from None


def _endpoint():
    return s3_client().meta.endpoint_url


def split_s3(uri):
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise StorageError(f"{uri!r} has no bucket; write s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


def join(root, rel):
    """`rel` (a '/'-separated relative path) under `root`, a local folder or an s3:// prefix."""
    if is_s3(root) or is_url(root):
        return root.rstrip("/") + "/" + rel
    return os.path.join(root, *rel.split("/"))


def exists(uri):
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            with s3_errors(uri):
                s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except NotFound:
            return False
    return os.path.exists(uri)


def read_bytes(uri, max_bytes=None):
    """All bytes at `uri`; StorageError naming the uri when it is missing or unreachable."""
    if is_url(uri):
        return read_url(uri, max_bytes)
    if is_s3(uri):
        return _read_s3(uri)
    try:
        with open(uri, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise StorageError(f"file {uri!r} does not exist") from None
    except IsADirectoryError:
        raise StorageError(f"{uri!r} is a directory, not a file") from None
    except OSError as e:
        raise StorageError(f"cannot read {uri!r}: {e.strerror or e}") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # urllib then raises the 3xx as an HTTPError


def read_url(url, max_bytes=None, follow_redirects=True, timeout=HTTP_TIMEOUT_S):
    """GET `url`; without `follow_redirects` a 3xx answer is an error (a checked host cannot hand
    the request on to an unchecked one)."""
    with open_url(url, follow_redirects, timeout) as resp:
        try:
            data = resp.read(max_bytes + 1 if max_bytes else -1)
        except (TimeoutError, OSError, ValueError) as e:  # reset, timeout, http.client.IncompleteRead
            raise StorageError(f"cannot fetch {url}: {e}") from None
    if max_bytes and len(data) > max_bytes:
        raise StorageError(f"{url} is larger than the {max_bytes}-byte limit")
    return data


class HTTPStatusError(StorageError):
    """The server answered with an error status (`code`)."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


class Unreachable(StorageError):
    """No answer: a refused connection, an unknown host, a timeout."""

    def __init__(self, message, reason):
        super().__init__(message)
        self.reason = reason


@contextlib.contextmanager
def open_url(url, follow_redirects=True, timeout=HTTP_TIMEOUT_S):
    """The response to GET `url`, open to read or stream from: the one HTTP client (urllib) of
    raysegment. HTTPStatusError or Unreachable, naming the URL, when there is nothing to read."""
    opener = urllib.request.build_opener(*([] if follow_redirects else [_NoRedirect]))
    try:
        resp = opener.open(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise HTTPStatusError(f"GET {url} answered HTTP {e.code} {e.reason}", e.code) from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(f"cannot fetch {url}: {reason}", reason) from None
    with resp:
        yield resp


def _read_s3(uri):
    bucket, key = split_s3(uri)
    with s3_errors(uri):
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()


def write_bytes(uri, data):
    """Write `data` so a reader never sees a partial file: temp + rename locally, one PUT on S3."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with s3_errors(uri):
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    _write_whole(uri, lambda f: f.write(data))


def _write_whole(uri, fill):
    """`fill(binary file)` writes the content into a temporary file, which then becomes `uri`
    whole: renamed into place locally, uploaded (multipart when large) to S3."""
    local = not is_s3(uri)
    folder = os.path.dirname(os.path.abspath(uri)) if local else None
    if local:
        os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(uri))
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
        if local:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual mode
            os.replace(tmp, uri)
        else:
            bucket, key = split_s3(uri)
            with s3_errors(uri):
                s3_client().upload_file(tmp, bucket, key)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def delete(uri):
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with s3_errors(uri):
            s3_client().delete_object(Bucket=bucket, Key=key)
    elif os.path.exists(uri):
        os.remove(uri)


def _wanted(name, suffixes):
    return name.lower().endswith(suffixes) and not name.startswith((".", "_"))


def iter_files(uri, suffixes):
    """Files ending in `suffixes` under a local directory or an s3:// prefix, one at a time (a
    million keys never sit in one list): S3 in its key order, a local tree folder by folder, each
    sorted. Names starting with '.' or '_' (ours and Ray's bookkeeping) are skipped. A single file
    is itself."""
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        pages = iter(s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix))
        while True:
            with s3_errors(uri):  # each page is one request: the first finds a missing bucket or credentials
                page = next(pages, None)
            if page is None:
                return
            for o in page.get("Contents", []):
                if _wanted(o["Key"].rsplit("/", 1)[-1], suffixes):
                    yield f"s3://{bucket}/{o['Key']}"
    elif os.path.isdir(uri):
        for root, dirs, files in os.walk(uri):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
            yield from (os.path.join(root, f) for f in sorted(files) if _wanted(f, suffixes))
    else:
        yield uri


def list_files(uri, suffixes):
    """iter_files as a sorted list (for folders of bookkeeping files, not inputs)."""
    return sorted(iter_files(uri, suffixes))


def iter_inputs(uri):
    """Images and PDFs under a folder or prefix."""
    return iter_files(uri, INPUT_SUFFIXES)


def iter_lines(uri):
    """The text lines of a local file or an S3 object, streamed (a manifest of a million lines is
    never held whole)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with s3_errors(uri):
            body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
        for line in body.iter_lines():
            yield line.decode("utf-8")
        return
    with open(uri, encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


def write_lines(uri, lines):
    """Write text lines as one whole file, streamed (a manifest of a million lines is never held
    whole); a reader never sees part of it."""
    _write_whole(uri, lambda f: f.writelines((line + "\n").encode("utf-8") for line in lines))
