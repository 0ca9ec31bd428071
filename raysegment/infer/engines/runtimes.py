"""ONNX Runtime and OpenVINO engines over an ONNX file (conversion.py makes it):
(N, 3, H, W) float32 -> (N, H, W) int32 label maps, as the Paddle engines."""

import os

import numpy as np

# precision -> OpenVINO's INFERENCE_PRECISION_HINT. Stated always: on CPUs with AMX, OpenVINO's
# own default is bf16, which is opt-in here. An int8 graph's quantize/dequantize pairs make its
# convolutions integer; the hint keeps the rest fp32.
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def installed(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None and importlib.util.find_spec("paddle2onnx") is not None


TENSORRT_WORKSPACE_BYTES = 4 << 30  # TensorRT's scratch memory per engine (ORT's own default is 1 GiB)


def tensorrt_cache():
    """Where TensorRT engines and timing caches are kept on this machine: beside the ONNX files, one
    folder per ONNX Runtime version (an engine built by one TensorRT cannot be loaded by another).
    ONNX Runtime names each engine by the graph's hash and the GPU's compute capability, so models,
    shapes and GPU kinds do not collide; a restart loads the engine instead of building it again
    (minutes per model and shape)."""
    from .conversion import cache_dir

    return os.path.join(cache_dir(), "tensorrt", f"onnxruntime-{runtime_version('onnxruntime')}")


def onnxruntime_providers(device, precision, available):
    """The execution providers (name, options), in ONNX Runtime's order of preference, for `device`
    ('cpu', None) | ('gpu', N) and `precision`, given the providers this onnxruntime build has.

        cpu                 CPU
        gpu, fp32           TensorRT (fp32) where the build has it, CUDA, CPU for what neither takes
        gpu, fp16           TensorRT with fp16 kernels, CPU (CUDA's kernels would run fp32)

    A GPU request the build cannot serve is a RuntimeError that says what to install."""
    if device[0] == "cpu":
        return [("CPUExecutionProvider", {})]
    gpu = device[1] or 0
    chosen = []
    if "TensorrtExecutionProvider" in available:
        cache = tensorrt_cache()
        chosen.append(("TensorrtExecutionProvider", {
            "device_id": gpu, "trt_fp16_enable": precision == "fp16", "trt_max_workspace_size": TENSORRT_WORKSPACE_BYTES,
            "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True, "trt_timing_cache_path": cache}))
    elif precision == "fp16":
        raise RuntimeError("precision fp16 runs on ONNX Runtime's TensorRT provider, which this onnxruntime build lacks; "
                           "install onnxruntime-gpu and TensorRT (see the README's GPU section), or use fp32")
    if precision != "fp16":
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError("onnxruntime has no CUDA provider here; pip uninstall onnxruntime && pip install onnxruntime-gpu")
        chosen.append(("CUDAExecutionProvider", {"device_id": gpu}))
    return [*chosen, ("CPUExecutionProvider", {})]


class OnnxRuntimeEngine:
    def __init__(self, onnx_path, device=("cpu", None), cpu_threads=1, precision="fp32"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = cpu_threads, 1
        options.log_severity_level = 3
        providers = onnxruntime_providers(device, precision, ort.get_available_providers())
        if device[0] == "gpu" and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* pip packages (onnxruntime-gpu[cuda,cudnn]), not LD_LIBRARY_PATH
        for name, provider_options in providers:
            if name == "TensorrtExecutionProvider":
                os.makedirs(provider_options["trt_engine_cache_path"], exist_ok=True)
        self.session = ort.InferenceSession(onnx_path, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.precision = precision
        self.name = "onnxruntime" + ("" if device[0] == "cpu" else f":{providers[0][0].removesuffix('ExecutionProvider').lower()}") \
            + (f":{precision}" if precision in ("int8", "fp16") else "")

    def __call__(self, batch):
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return out.astype(np.int32, copy=False)


def openvino_properties(precision, cpu_threads):
    """OpenVINO's compile properties on CPU for `precision` with `cpu_threads` threads."""
    return {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision], "INFERENCE_NUM_THREADS": cpu_threads,
            "PERFORMANCE_HINT": "LATENCY"}


class OpenVinoEngine:
    def __init__(self, onnx_path, cpu_threads=1, precision="fp32"):
        import openvino as ov

        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(onnx_path), "CPU", openvino_properties(precision, cpu_threads))
        self.request = self.compiled.create_infer_request()
        self.precision = precision
        self.name = f"openvino:{precision}"

    def __call__(self, batch):
        self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return self.request.get_output_tensor(0).data.astype(np.int32)  # a copy: the request reuses its buffer


RUNTIME_PACKAGES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "openvino": ("openvino",)}


def runtime_version(name):
    """The installed version of runtime `name` (onnxruntime's GPU build is its own package), or "none"."""
    import importlib.metadata

    for package in RUNTIME_PACKAGES[name]:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return "none"
