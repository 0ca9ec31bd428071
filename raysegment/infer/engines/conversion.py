"""An exported inference folder -> an ONNX file for ONNX Runtime and OpenVINO, cached on disk.

paddle2onnx 2.1 converts Paddle 3's PIR graphs, with two limits measured here: it refuses adaptive
pooling (PP-LiteSeg's pyramid pooling) unless the input height and width are static, which an
exported folder's graph never has, and it aborts the whole process (SIGABRT) on a graph it cannot
take. So the graph is traced again from the architecture code with the folder's weights (their names
match a fresh build: export.exported_layer), with dynamic height and width when paddle2onnx takes that
and else one graph per input shape, and each conversion runs in a child process:

    python -m raysegment.infer.engines.conversion MODEL_DIR OUT.onnx [HEIGHT WIDTH]

Files are cached under $RAYSEGMENT_CACHE_DIR (default ~/.cache/raysegment), keyed by the folder's
graph and weights, the shape and the paddle2onnx version, so each machine converts a model once; a
failed conversion is cached too (as its reason), so it is not retried on every load.
"""

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys

from ...storage import file_lock

CACHE_ENV = "RAYSEGMENT_CACHE_DIR"
OPSET = 17
CONVERT_TIMEOUT_S = 900
CONVERTER_REVISION = 2  # bump when convert() changes, so files and failures cached by an older one are redone


class ConversionError(RuntimeError):
    pass


def cache_dir():
    return os.path.join(os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "raysegment"), "onnx")


def onnx_file(info, shape=None):
    """Path of the ONNX file for `info`'s folder (shape None: dynamic height and width, else
    (h, w)), converting it on first use; ConversionError says why when paddle2onnx cannot."""
    path = os.path.join(cache_dir(), f"{folder_key(info)}_{_shape_tag(shape)}.onnx")
    failed = path + ".failed"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with file_lock(path + ".lock"):  # actors on one machine convert once, the others wait for it
        if not os.path.isfile(path) and not os.path.isfile(failed):
            _convert_in_child(os.path.dirname(info.graph_file), path, shape, failed)
    if os.path.isfile(failed):
        with open(failed, encoding="utf-8") as f:
            raise ConversionError(f.read())
    return path


def _work_dir(path):
    """Where the child traces the graph: beside the ONNX file, and removed by the parent as well,
    since an aborted child cannot clean up after itself."""
    return path + ".work"


def run_child(cmd, path, timeout_s):
    """Run `cmd` (a python -m child that writes `path`): (whether it did, its output lines without
    warnings). A child that aborts or hangs cannot take the calling process down with it."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        ok, output = done.returncode == 0 and os.path.isfile(path), done.stderr + done.stdout
    except subprocess.TimeoutExpired:
        ok, output = False, f"timed out after {timeout_s} s"
    return ok, [line.strip() for line in output.splitlines() if line.strip() and "warn" not in line.lower()]


def _convert_in_child(model_dir, path, shape, failed):
    cmd = [sys.executable, "-m", __name__, model_dir, path, *map(str, shape or ())]
    try:
        ok, lines = run_child(cmd, path, CONVERT_TIMEOUT_S)
    finally:
        shutil.rmtree(_work_dir(path), ignore_errors=True)
    if not ok:
        # paddle2onnx's own "[ERROR][Paddle2ONNX] [OP: ...] why" first, then a Python exception's last line
        reason = " ".join(line.removeprefix("[ERROR][Paddle2ONNX] ") for line in lines if line.startswith("[ERROR]")) \
            or (lines[-1] if lines else "the child exited without a message")
        with open(failed, "w", encoding="utf-8") as f:
            f.write(f"paddle2onnx cannot convert {model_dir} ({_shape_tag(shape)}): {reason[:300]}")


def _shape_tag(shape):
    return "x".join(map(str, shape)) if shape else "dynamic"


def folder_key(info):
    """The model name and a digest of the folder's graph and weights, the paddle2onnx version and CONVERTER_REVISION."""
    files = tuple((name, os.stat(name).st_mtime_ns, os.stat(name).st_size) for name in (info.graph_file, info.params_file))
    if files in _KEYS:
        return _KEYS[files]
    digest = hashlib.sha256()
    for name in (info.graph_file, info.params_file):
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    digest.update(f"{importlib.metadata.version('paddle2onnx')} {CONVERTER_REVISION}".encode())
    _KEYS[files] = key = f"{info.model_name}_{digest.hexdigest()[:16]}"
    return key


_KEYS = {}  # ((file, mtime, size), ...) -> folder_key: each folder hashed once per process


def folder_layer(info):
    """The folder's model as a paddle.nn.Layer in eval mode: a fresh build of info.model_name with the folder's weights."""
    from ...models import WeightsError
    from ..export import exported_layer

    try:
        return exported_layer(info)[0]
    except WeightsError as e:
        raise ConversionError(str(e)) from None


def convert(model_dir, path, shape=None):
    """Trace the folder's model (height, width static when `shape` is given) and write it as ONNX."""
    import paddle
    import paddle2onnx

    from ..export import ArgmaxHead
    from ..model_files import read_model_folder

    info = read_model_folder(model_dir)
    h, w = shape or (None, None)
    static = paddle.jit.to_static(ArgmaxHead(folder_layer(info)),
                                  input_spec=[paddle.static.InputSpec([None, 3, h, w], "float32", "x")], full_graph=True)
    work = _work_dir(path)
    os.makedirs(work, exist_ok=True)
    try:
        prefix = os.path.join(work, "inference")
        paddle.jit.save(static, prefix)
        paddle2onnx.export(prefix + ".json", prefix + ".pdiparams", path + ".tmp", opset_version=OPSET, optimize_tool="None")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not os.path.isfile(path + ".tmp"):
        raise ConversionError("paddle2onnx wrote nothing")
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    convert(sys.argv[1], sys.argv[2], tuple(map(int, sys.argv[3:5])) or None)
