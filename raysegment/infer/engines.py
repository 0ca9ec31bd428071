"""Forward passes behind the Predictor: (N, 3, H, W) float32 -> (N, H, W) int32 label maps.

`LayerEngine` runs a paddle.nn.Layer (a checkpoint, or a model being trained); `InferenceEngine`
runs an exported folder through paddle.inference. Both argmax inside Paddle so only the label map
(4 bytes a pixel, not 4 x C) crosses back to numpy.
"""

import contextlib
import functools
import logging
import os
import sys

import numpy as np

from .engine_spec import PINNED_RUN_MODES

log = logging.getLogger(__name__)

# CPU modes of paddle.inference. Unpinned, an exported model runs on oneDNN ("mkldnn": 5.7x plain
# Paddle for PP-LiteSeg-T at 360x480 on 2 cores, Paddle 3.2.2) once it has given plain Paddle's
# masks on a probe image; otherwise, or when oneDNN fails (Paddle 3.3.0-3.3.1 fail on every
# interpolation op), it runs plain Paddle and logs why. `jobs/benchmark.py predict` times both.
PROBE_AGREEMENT = 0.999  # share of probe pixels oneDNN must label as plain Paddle does


class DeviceError(ValueError):
    pass


def resolve_device(device):
    """'cpu' | 'gpu' | 'gpu:N' | None (GPU 0 when there is one, else CPU) -> ('cpu', None) or ('gpu', N).
    Only a GPU question imports Paddle: a CPU process that runs ONNX Runtime or OpenVINO never
    loads it (~250 MB)."""
    kind, _, index = str(device).strip().lower().partition(":")
    if kind == "cpu" and not index:
        return "cpu", None
    import paddle

    n_gpus = paddle.device.cuda.device_count() if paddle.device.is_compiled_with_cuda() else 0
    if device is None:
        return ("gpu", 0) if n_gpus else ("cpu", None)
    if kind != "gpu" or (index and not index.isdigit()):
        raise DeviceError(f"device {device!r} is not one of cpu, gpu, gpu:N")
    if not n_gpus:
        raise DeviceError(
            f"device {device!r} asks for a GPU but none is available "
            f"({'no CUDA device found' if paddle.device.is_compiled_with_cuda() else 'this paddlepaddle build is CPU-only; pip install raysegment[gpu]'}); "
            "use device='cpu'"
        )
    gpu = int(index or 0)
    if gpu >= n_gpus:
        raise DeviceError(f"device {device!r}: there are only {n_gpus} GPUs (gpu:0 .. gpu:{n_gpus - 1})")
    return "gpu", gpu


def default_cpu_threads():
    """The cores this process may run on. Not OMP_NUM_THREADS: importing paddle sets it to 1 when
    unset, which would make every CPU forward single-threaded (3.2 vs 5.3 images/s on 2 cores).
    Ray actors pass their num_cpus explicitly instead."""
    return len(os.sched_getaffinity(0))


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
            paddle.base.core.set_num_threads(cpu_threads or default_cpu_threads())
        self.layer = layer
        self.layer.eval()
        self.run_mode, self.reason = "dygraph", "a checkpoint folder runs its paddle.nn.Layer"
        self.name = f"paddle:{self.run_mode}"

    def __call__(self, batch):
        import paddle

        with paddle.no_grad():
            logits = self.layer(paddle.to_tensor(batch))[0]
            return paddle.argmax(logits, axis=1, dtype="int32").numpy()


class InferenceEngine(_Reported):
    """An exported folder through paddle.inference. `run_mode` pins a CPU mode; None picks one
    (see CPU_RUN_MODES) and says why in `self.reason`."""

    def __init__(self, graph_file, params_file, device=("cpu", None), run_mode=None, cpu_threads=None):
        self.files, self.device = (graph_file, params_file), device
        self.cpu_threads = cpu_threads or default_cpu_threads()
        if run_mode not in (None, *PINNED_RUN_MODES):
            raise ValueError(f"run_mode {run_mode!r} is not one of {', '.join(PINNED_RUN_MODES)}")
        self.pinned = device[0] == "gpu" or run_mode is not None
        if device[0] == "gpu":
            self.run_mode, self.reason = "gpu", "GPU device"
            self._predictor = self._create("gpu")
        elif run_mode:
            self.run_mode, self.reason = run_mode, "pinned"
            try:
                self._predictor, _ = self._open(run_mode)
            except Exception as e:  # Paddle raises several types from its C++ side
                raise RuntimeError(f"run_mode {run_mode!r} cannot run {os.path.dirname(graph_file)}: "
                                   f"{error_line(e)}; leave run_mode unset to pick one that can") from e
        else:
            self._pick_cpu_mode()

    def _pick_cpu_mode(self):
        plain, plain_mask = self._open("paddle")
        try:
            fast, fast_mask = self._open("mkldnn")
            agreement = float((fast_mask == plain_mask).mean())
        except Exception as e:  # Paddle raises several types from its C++ side
            agreement, failure = None, error_line(e)
        if agreement is not None and agreement >= PROBE_AGREEMENT:
            self.run_mode, self.reason, self._predictor = "mkldnn", f"oneDNN gave plain Paddle's masks on the probe ({agreement:.2%})", fast
        else:
            why = f"oneDNN fails ({failure})" if agreement is None else f"oneDNN agreed with plain Paddle on only {agreement:.2%} of the probe"
            self.run_mode, self.reason, self._predictor = "paddle", f"{why}; running plain Paddle", plain
        log.info("%s: run mode %s: %s", os.path.dirname(self.files[0]), self.run_mode, self.reason)

    def _open(self, mode):
        """(predictor, its label map of the probe): the first run happens here, on the probe, so a mode
        that cannot run this graph fails at load, and Paddle 3.2's oneDNN passes, which print one debug
        line per mean op on a first run, print to nowhere."""
        predictor = self._create(mode)
        with _quiet_stdout():
            return predictor, self._run(predictor, _probe_batch())

    def _create(self, mode):
        from paddle import inference

        config = inference.Config(*self.files)
        config.disable_glog_info()
        if mode == "gpu":
            config.enable_use_gpu(256, self.device[1])
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(self.cpu_threads)
            config.enable_mkldnn() if mode.startswith("mkldnn") else config.disable_mkldnn()
            if mode == "mkldnn_bf16":
                config.enable_mkldnn_bfloat16()
        return inference.create_predictor(config)

    @property
    def name(self):
        return f"paddle:{self.run_mode}"

    def __call__(self, batch):
        try:
            return self._run(self._predictor, batch)
        except Exception as e:  # an unpinned oneDNN that passed the probe but fails on this shape
            if self.pinned or self.run_mode != "mkldnn":
                raise
            failure = error_line(e)
            self.run_mode, self.reason = "paddle", f"oneDNN fails on input {list(batch.shape)} ({failure}); running plain Paddle"
            log.warning("%s: %s", os.path.dirname(self.files[0]), self.reason)
            self._predictor = self._create("paddle")
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


@functools.cache
def _probe_batch(h=96, w=128):
    """A fixed smooth image (blobs, not noise: few near-ties between classes), normalised as models take it."""
    rng = np.random.default_rng(0)
    small = rng.uniform(-1, 1, (1, 3, h // 16, w // 16)).astype(np.float32)
    return np.ascontiguousarray(np.kron(small, np.ones((1, 1, 16, 16), np.float32)))
