"""Paddle's engines: (N, 3, H, W) float32 -> (N, H, W) int32 label maps.

`LayerEngine` runs a paddle.nn.Layer (a checkpoint, or a model being trained); `PaddleEngine` runs
an exported folder through paddle.inference in one CPU mode (or on a GPU). Both argmax inside Paddle
so only the label map (4 bytes a pixel, not 4 x C) crosses back to numpy. Which mode runs is
choice.py's decision, not theirs.
"""

import contextlib
import logging
import os
import sys

import numpy as np

from ...ray_env import process_cpus
from .spec import PINNED_RUN_MODES

log = logging.getLogger(__name__)


class DeviceError(ValueError):
    pass


def device_parts(device):
    """'cpu' | 'gpu' | 'gpu:N' -> ('cpu', None) or ('gpu', N) as written (gpu means gpu:0); nothing
    asks whether that GPU exists (resolve_device does)."""
    kind, _, index = str(device).strip().lower().partition(":")
    if kind == "cpu" and not index:
        return "cpu", None
    if kind != "gpu" or (index and not index.isdigit()):
        raise DeviceError(f"device {device!r} is not one of cpu, gpu, gpu:N")
    return "gpu", int(index or 0)


def resolve_device(device):
    """'cpu' | 'gpu' | 'gpu:N' | None (GPU 0 when there is one, else CPU) -> ('cpu', None) or ('gpu', N).
    Only a GPU question imports Paddle: a CPU process that runs ONNX Runtime or OpenVINO never
    loads it (~250 MB)."""
    asked = None if device is None else device_parts(device)
    if asked == ("cpu", None):
        return asked
    import paddle

    n_gpus = paddle.device.cuda.device_count() if paddle.device.is_compiled_with_cuda() else 0
    if asked is None:
        return ("gpu", 0) if n_gpus else ("cpu", None)
    if not n_gpus:
        raise DeviceError(
            f"device {device!r} asks for a GPU but none is available "
            f"({'no CUDA device found' if paddle.device.is_compiled_with_cuda() else 'this paddlepaddle build is CPU-only; pip install raysegment[gpu]'}); "
            "use device='cpu'"
        )
    gpu = asked[1]
    if gpu >= n_gpus:
        raise DeviceError(f"device {device!r}: there are only {n_gpus} GPUs (gpu:0 .. gpu:{n_gpus - 1})")
    return "gpu", gpu


GPU_MEMORY_POOL_MB = 256  # paddle.inference's first GPU memory pool; it grows as the model needs


def config_calls(mode, device, cpu_threads):
    """The paddle.inference.Config calls, (method, arguments) in order, that run `mode` (a
    PINNED_RUN_MODES CPU mode, or "gpu": fp32 CUDA kernels on GPU device[1], the first GPU Ray made
    visible) with `cpu_threads` CPU threads: what PaddleEngine makes and what a dry run reports."""
    if mode == "gpu":
        return [("enable_use_gpu", (GPU_MEMORY_POOL_MB, device[1] or 0))]
    calls = [("disable_gpu", ()), ("set_cpu_math_library_num_threads", (cpu_threads,)),
             ("enable_mkldnn" if mode.startswith("mkldnn") else "disable_mkldnn", ())]
    return calls + [("enable_mkldnn_bfloat16", ())] if mode == "mkldnn_bf16" else calls


class _Reported:
    @property
    def reasons(self):
        """Why this engine runs, one line per decision (engine_choice.ChosenEngine makes one per shape)."""
        return [self.reason]


class LayerEngine(_Reported):
    def __init__(self, layer, device=("cpu", None), cpu_threads=None):
        import paddle

        kind, gpu = device
        paddle.set_device("cpu" if kind == "cpu" else f"gpu:{gpu}")
        if kind == "cpu":
            paddle.base.core.set_num_threads(cpu_threads or process_cpus())
        self.layer = layer
        self.layer.eval()
        self.run_mode, self.reason = "dygraph", "a checkpoint folder runs its paddle.nn.Layer"
        self.name = f"paddle:{self.run_mode}"

    def __call__(self, batch):
        import paddle

        with paddle.no_grad():
            logits = self.layer(paddle.to_tensor(batch))[0]
            return paddle.argmax(logits, axis=1, dtype="int32").numpy()


class PaddleEngine(_Reported):
    """An exported folder through paddle.inference in `mode` (a PINNED_RUN_MODES CPU mode, or "gpu").
    `fallback`: a mode to switch to, for good, when `mode` fails on an input (an unpinned oneDNN that
    passed its probe but fails at some input shapes); None: the failure is raised."""

    def __init__(self, graph_file, params_file, device=("cpu", None), mode="paddle", cpu_threads=None, reason="pinned",
                 fallback=None):
        if mode not in ("gpu", *PINNED_RUN_MODES):
            raise ValueError(f"run_mode {mode!r} is not one of {', '.join(PINNED_RUN_MODES)}")
        self.files, self.device = (graph_file, params_file), device
        self.cpu_threads = cpu_threads or process_cpus()
        self.run_mode, self.reason, self.fallback = mode, reason, fallback
        self._predictor = self._create(mode)

    def probe(self, batch):
        """The label map of `batch`: the first run, so a mode that cannot run this graph fails here
        (at load), and Paddle 3.2's oneDNN passes, which print one debug line per mean op on a first
        run, print to nowhere."""
        with _quiet_stdout():
            return self._run(self._predictor, batch)

    def _create(self, mode):
        from paddle import inference

        config = inference.Config(*self.files)
        config.disable_glog_info()
        for method, args in config_calls(mode, self.device, self.cpu_threads):
            getattr(config, method)(*args)
        return inference.create_predictor(config)

    @property
    def name(self):
        return f"paddle:{self.run_mode}"

    def __call__(self, batch):
        try:
            return self._run(self._predictor, batch)
        except Exception as e:  # Paddle raises several types from its C++ side
            if self.fallback is None:
                raise
            self.run_mode, self.reason = self.fallback, f"oneDNN fails on input {list(batch.shape)} ({error_line(e)}); running plain Paddle"
            self.fallback = None
            log.warning("%s: %s", os.path.dirname(self.files[0]), self.reason)
            self._predictor = self._create(self.run_mode)
            return self._run(self._predictor, batch)

    @staticmethod
    def _run(p, batch):
        handle = p.get_input_handle(p.get_input_names()[0])
        handle.reshape(batch.shape)
        handle.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        p.run()
        return p.get_output_handle(p.get_output_names()[0]).copy_to_cpu()


def error_line(error):
    """The line of an engine's error that says what went wrong (a Paddle C++ error's first line is
    often "In user code:")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and line.strip() != "In user code:"]
    return next((line for line in lines if "Error:" in line), lines[0] if lines else type(error).__name__)[:300]


@contextlib.contextmanager
def _quiet_stdout():
    """Silence file descriptor 1 (C++ prints bypass sys.stdout) for the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
