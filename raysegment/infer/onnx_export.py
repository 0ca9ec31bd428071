"""An exported inference folder -> an ONNX file for ONNX Runtime and OpenVINO, cached on disk.

paddle2onnx 2.1 converts Paddle 3's PIR graphs, with two limits measured here: it refuses adaptive
pooling (PP-LiteSeg's pyramid pooling) unless the input height and width are static, which an
exported folder's graph never has, and it aborts the whole process (SIGABRT) on a graph it cannot
take. So the graph is traced again from the architecture code with the folder's weights (their names
match a fresh build: models.build_canonical), with dynamic height and width when paddle2onnx takes that
and else one graph per input shape, and each conversion runs in a child process:

    python -m raysegment.infer.onnx_export MODEL_DIR OUT.onnx [HEIGHT WIDTH]

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

from ..storage import file_lock

CACHE_ENV = "RAYSEGMENT_CACHE_DIR"
OPSET = 17
CONVERT_TIMEOUT_S = 900
CONVERTER_REVISION = 2  # bump when convert() changes, so files and failures cached by an older one are redone
GENERATED = "generated_tensor_"  # Paddle's name for tensors made with paddle.to_tensor


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


def _convert_in_child(model_dir, path, shape, failed):
    cmd = [sys.executable, "-m", __name__, model_dir, path, *map(str, shape or ())]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S)
        ok, output = done.returncode == 0 and os.path.isfile(path), done.stderr + done.stdout
    except subprocess.TimeoutExpired:
        ok, output = False, f"timed out after {CONVERT_TIMEOUT_S} s"
    finally:
        shutil.rmtree(_work_dir(path), ignore_errors=True)
    if not ok:
        lines = [line.strip() for line in output.splitlines() if line.strip() and "warn" not in line.lower()]
        # paddle2onnx's own "[ERROR][Paddle2ONNX] [OP: ...] why" first, then a Python exception's last line
        reason = " ".join(line.removeprefix("[ERROR][Paddle2ONNX] ") for line in lines if line.startswith("[ERROR]")) \
            or (lines[-1] if lines else f"exit status {done.returncode}")
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


def folder_weights(info):
    """{parameter name: array} of an inference folder, read through Paddle's static loader."""
    import numpy as np
    import paddle

    paddle.enable_static()
    try:
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe = paddle.static.Executor(paddle.CPUPlace())
            program, _, _ = paddle.static.load_inference_model(os.path.splitext(info.graph_file)[0], exe)
            names = [op.attrs()["parameter_name"] for op in program.global_block().ops if op.name() == "builtin.parameter"]
            return {name: np.array(scope.find_var(name).get_tensor()) for name in names}
    finally:
        paddle.disable_static()


def folder_layer(info):
    """The folder's model as a paddle.nn.Layer: a fresh build of info.model_name with the folder's weights."""
    from ..models import build_canonical

    weights = folder_weights(info)
    layer = build_canonical(info.model_name, info.num_classes)
    params = {p.name: p for p in layer.state_dict().values()}
    # Tensors a model makes at build time (Swin's relative position index) are named by a counter no
    # guard resets; they follow from the architecture, so they pair up in creation order
    made = sorted((n for n in params if n.startswith(GENERATED)), key=_counter)
    captured = sorted((n for n in weights if n.startswith(GENERATED)), key=_counter)
    if len(made) == len(captured):
        params.update({old: params.pop(new) for old, new in zip(captured, made)})
    unknown = [n for n in weights if n not in params or tuple(params[n].shape) != weights[n].shape]
    if unknown:
        raise ConversionError(f"{len(unknown)} weights of {info.graph_file} (e.g. {unknown[0]}) do not match a fresh "
                              f"{info.model_name} build; the folder was not exported by raysegment")
    for name, value in weights.items():
        params[name].set_value(value)
    layer.eval()
    return layer


def _counter(name):
    return int(name.rsplit("_", 1)[1])


def convert(model_dir, path, shape=None):
    """Trace the folder's model (height, width static when `shape` is given) and write it as ONNX."""
    import paddle
    import paddle2onnx

    from .export import ArgmaxHead
    from .model_files import read_model_folder

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
