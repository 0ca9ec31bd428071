"""PaddleX's official weights, fetched into PaddleX's own cache as PaddleX publishes them.

    create_model("PP-LiteSeg-T")   {base}/PP-LiteSeg-T_infer.tar -> $PADDLE_PDX_CACHE_HOME/official_models/PP-LiteSeg-T/
    Train.pretrain_weight_path=https://.../X.pdparams            -> $PADDLE_PDX_CACHE_HOME/pretrained/X.pdparams

base is PaddleX's bucket (BASE_URL) or $RAYSEGMENT_MODEL_BASE_URL, a mirror holding the same file
names. $PADDLE_PDX_CACHE_HOME defaults to ~/.paddlex, so a folder PaddleX already fetched is used
as it is, and one fetched here serves PaddleX too. A download lands in a temporary file beside its
target and moves into place only whole (its Content-Length checked, an archive unpacked and checked
as an inference folder): a cut transfer or a damaged archive leaves the cache as it was.
"""

import os
import sys
import tarfile
import tempfile

from . import storage

BASE_URL = "https://paddle-model-ecology.bj.bcebos.com/paddlex/official_inference_model/paddle3.0.0"
BASE_URL_ENV = "RAYSEGMENT_MODEL_BASE_URL"
TIMEOUT_S = 30
CHUNK = 1 << 20


class DownloadError(OSError):
    pass


def cache_home():
    return os.environ.get("PADDLE_PDX_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".paddlex")


def official_model_dir(model_name):
    """Where PaddleX keeps the official inference folder of `model_name`."""
    return os.path.join(cache_home(), "official_models", model_name)


def official_model_url(model_name):
    return f"{(os.environ.get(BASE_URL_ENV) or BASE_URL).rstrip('/')}/{model_name}_infer.tar"


def fetch_official_model(model_name, check=None):
    """The official inference folder of `model_name`: the cached one, else downloaded and unpacked
    into the cache. One process per machine downloads; the others wait and use its folder.
    check(folder): raises a ValueError when an unpacked folder is no model folder (infer's
    read_model_folder); such a download is refused and the cache left as it was."""
    target = official_model_dir(model_name)
    if os.path.isdir(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with storage.file_lock(target + ".lock"):
        if os.path.isdir(target):
            return target
        url = official_model_url(model_name)
        with tempfile.TemporaryDirectory(dir=os.path.dirname(target), prefix=f".{model_name}-") as tmp:
            archive = os.path.join(tmp, "model.tar")
            download(url, archive, what=f"{model_name} (official inference model)")
            folder = _unpack(archive, os.path.join(tmp, "unpacked"), url)
            try:
                check and check(folder)
            except ValueError as e:
                raise DownloadError(f"{url} does not hold a usable inference folder: {e}") from None
            os.replace(folder, target)
    return target


def fetch_file(url):
    """A weights file at an http(s) URL, downloaded once into the cache; returns its local path."""
    name = os.path.basename(url.split("?", 1)[0].rstrip("/")) or "weights.pdparams"
    target = os.path.join(cache_home(), "pretrained", name)
    if os.path.isfile(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with storage.file_lock(target + ".lock"):
        if not os.path.isfile(target):
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{name}-")
            os.close(fd)
            try:
                download(url, tmp, what=name)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
    return target


def download(url, path, what=None):
    """GET `url` into `path` with a progress bar (on a terminal); DownloadError naming the URL when
    the server refuses, cannot be reached, or sends fewer bytes than it announced."""
    from tqdm import tqdm

    hint = f"set {BASE_URL_ENV} to a mirror, or put the files in place by hand"
    try:
        with storage.open_url(url, timeout=TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            got = 0
            with open(path, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=what or os.path.basename(url),
                                             file=sys.stderr, disable=None, leave=False) as bar:
                try:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
                except (OSError, ValueError) as e:  # reset connection, timeout, http.client.IncompleteRead
                    raise DownloadError(f"the download of {url} broke off after {got} bytes ({e}); run again") from None
    except storage.HTTPStatusError as e:
        raise DownloadError(f"{e}" + ("; no such file there: check the model name or the base URL" if e.code == 404 else "")) from None
    except storage.Unreachable as e:
        raise DownloadError(f"cannot reach {url} ({e.reason}); offline? {hint}") from None
    if total is not None and got != total:
        raise DownloadError(f"the download of {url} broke off after {got} of {total} bytes; run again")


def _unpack(archive, dest, url):
    """Unpack a PaddleX model archive (one folder, or the files at its top) -> the model folder."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")  # refuses absolute paths, '..' and links out of dest
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DownloadError(f"{url} is not a readable tar archive ({e}); the file is damaged: run again or check the mirror") from None
    entries = os.listdir(dest)
    if len(entries) == 1 and os.path.isdir(os.path.join(dest, entries[0])):
        return os.path.join(dest, entries[0])
    return dest


__all__ = ["DownloadError", "fetch_official_model", "fetch_file", "download", "official_model_dir", "official_model_url"]
