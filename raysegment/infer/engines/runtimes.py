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


class OnnxRuntimeEngine:
    def __init__(self, onnx_path, device=("cpu", None), cpu_threads=1, precision="fp32"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = cpu_threads, 1
        options.log_severity_level = 3
        if device[0] == "gpu":
            available = ort.get_available_providers()
            from .conversion import cache_dir

            trt = {"device_id": device[1], "trt_fp16_enable": precision == "fp16", "trt_engine_cache_enable": True,
                   "trt_engine_cache_path": os.path.join(cache_dir(), "tensorrt")}
            wanted = [(p, o) for p, o in (("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", {"device_id": device[1]}))
                      if p in available and (p.startswith("Tensorrt") or precision != "fp16")]
            if not wanted:
                raise RuntimeError("onnxruntime has no CUDA provider here; pip install onnxruntime-gpu")
            providers = wanted
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(onnx_path, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.precision = precision
        self.name = "onnxruntime" + ("" if device[0] == "cpu" else f":{providers[0][0].removesuffix('ExecutionProvider').lower()}") \
            + (":int8" if precision == "int8" else "")

    def __call__(self, batch):
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return out.astype(np.int32, copy=False)


class OpenVinoEngine:
    def __init__(self, onnx_path, cpu_threads=1, precision="fp32"):
        import openvino as ov

        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(onnx_path), "CPU", {
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision],
            "INFERENCE_NUM_THREADS": cpu_threads,
            "PERFORMANCE_HINT": "LATENCY",
        })
        self.request = self.compiled.create_infer_request()
        self.precision = precision
        self.name = f"openvino:{precision}"

    def __call__(self, batch):
        self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return self.request.get_output_tensor(0).data.astype(np.int32)  # a copy: the request reuses its buffer
