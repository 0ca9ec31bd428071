"""Forward passes behind the Predictor: (N, 3, H, W) float32 -> (N, H, W) int32 label maps.

`LayerEngine` runs a paddle.nn.Layer (a checkpoint, or a model being trained); `InferenceEngine`
runs an exported folder through paddle.inference. Both argmax inside Paddle so only the label map
(4 bytes a pixel, not 4 x C) crosses back to numpy.
"""

import os

import numpy as np
import paddle

# CPU modes of paddle.inference; the first is the default. oneDNN ("mkldnn") fails in Paddle 3.3.1
# on every graph with an interpolation op, i.e. on every segmentation model, at the first run()
# (ConvertPirAttribute2RuntimeAttribute not support ...), so it is opt-in.
# `jobs/benchmark.py predict` times every mode that works.
CPU_RUN_MODES = ("paddle", "mkldnn")


class DeviceError(ValueError):
    pass


def resolve_device(device):
    """'cpu' | 'gpu' | 'gpu:N' | None (GPU 0 when there is one, else CPU) -> ('cpu', None) or ('gpu', N)."""
    n_gpus = paddle.device.cuda.device_count() if paddle.device.is_compiled_with_cuda() else 0
    if device is None:
        return ("gpu", 0) if n_gpus else ("cpu", None)
    kind, _, index = str(device).strip().lower().partition(":")
    if kind == "cpu" and not index:
        return "cpu", None
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


class LayerEngine:
    def __init__(self, layer, device=("cpu", None), cpu_threads=None):
        kind, gpu = device
        paddle.set_device("cpu" if kind == "cpu" else f"gpu:{gpu}")
        if kind == "cpu":
            paddle.base.core.set_num_threads(cpu_threads or default_cpu_threads())
        self.layer = layer
        self.layer.eval()
        self.run_mode = "dygraph"

    def __call__(self, batch):
        with paddle.no_grad():
            logits = self.layer(paddle.to_tensor(batch))[0]
            return paddle.argmax(logits, axis=1, dtype="int32").numpy()


class InferenceEngine:
    def __init__(self, graph_file, params_file, device=("cpu", None), run_mode=None, cpu_threads=None):
        self.files, self.device = (graph_file, params_file), device
        self.cpu_threads = cpu_threads or default_cpu_threads()
        if device[0] == "gpu":
            self.run_mode = "gpu"
        elif run_mode in (None, *CPU_RUN_MODES):
            self.run_mode = run_mode or CPU_RUN_MODES[0]
        else:
            raise ValueError(f"run_mode {run_mode!r} is not one of {', '.join(CPU_RUN_MODES)}")
        self._predictor = self._create(self.run_mode)

    def _create(self, mode):
        from paddle import inference

        config = inference.Config(*self.files)
        config.disable_glog_info()
        if mode == "gpu":
            config.enable_use_gpu(256, self.device[1])
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(self.cpu_threads)
            config.enable_mkldnn() if mode == "mkldnn" else config.disable_mkldnn()
        return inference.create_predictor(config)

    def __call__(self, batch):
        p = self._predictor
        handle = p.get_input_handle(p.get_input_names()[0])
        handle.reshape(batch.shape)
        handle.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        p.run()
        return p.get_output_handle(p.get_output_names()[0]).copy_to_cpu()
