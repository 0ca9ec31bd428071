"""What each engine would be opened with on a GPU, checked on a CPU machine: ONNX Runtime's exact
provider lists (CUDA, TensorRT with its per-machine engine cache and fp16 flag), paddle.inference's
Config calls per run mode, the engine plan per engine and precision, and Predictor.plan on the
bundled model. Nothing here touches CUDA; what does is marked gpu (tests/test_predict.py)."""

import os

import pytest

from raysegment.data import BUNDLED_MODEL
from raysegment.infer import Predictor
from raysegment.infer.engines import runtimes
from raysegment.infer.engines.choice import engine_plan
from raysegment.infer.engines.paddle import GPU_MEMORY_POOL_MB, config_calls
from raysegment.infer.engines.spec import EngineSpec
from raysegment.infer.options import EngineConfig, InferenceOptions

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]  # onnxruntime-gpu's list
CUDA_ONLY = ["CUDAExecutionProvider", "CPUExecutionProvider"]  # onnxruntime-gpu without TensorRT's libraries
CPU_BUILD = ["CPUExecutionProvider"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSEGMENT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tensorrt_options(cache, gpu, fp16):
    path = str(cache / "onnx" / "tensorrt" / f"onnxruntime-{runtimes.runtime_version('onnxruntime')}")
    return {"device_id": gpu, "trt_fp16_enable": fp16, "trt_max_workspace_size": 4 << 30,
            "trt_engine_cache_enable": True, "trt_engine_cache_path": path,
            "trt_timing_cache_enable": True, "trt_timing_cache_path": path}


def test_onnxruntime_provider_lists_per_device_and_precision(cache):
    providers = runtimes.onnxruntime_providers
    assert providers(("cpu", None), "fp32", GPU_BUILD) == [("CPUExecutionProvider", {})]
    assert providers(("cpu", None), "int8", CPU_BUILD) == [("CPUExecutionProvider", {})]
    assert providers(("gpu", 0), "fp32", GPU_BUILD) == [
        ("TensorrtExecutionProvider", tensorrt_options(cache, 0, False)),
        ("CUDAExecutionProvider", {"device_id": 0}),
        ("CPUExecutionProvider", {})]
    # fp16: TensorRT's fp16 kernels only (CUDA's would silently run fp32)
    assert providers(("gpu", 1), "fp16", GPU_BUILD) == [
        ("TensorrtExecutionProvider", tensorrt_options(cache, 1, True)),
        ("CPUExecutionProvider", {})]
    assert providers(("gpu", 0), "fp32", CUDA_ONLY) == [("CUDAExecutionProvider", {"device_id": 0}), ("CPUExecutionProvider", {})]


def test_gpu_requests_the_onnxruntime_build_cannot_serve_say_what_to_install(cache):
    with pytest.raises(RuntimeError, match="TensorRT provider.*install onnxruntime-gpu and TensorRT"):
        runtimes.onnxruntime_providers(("gpu", 0), "fp16", CUDA_ONLY)
    with pytest.raises(RuntimeError, match="no CUDA provider.*pip install onnxruntime-gpu"):
        runtimes.onnxruntime_providers(("gpu", 0), "fp32", CPU_BUILD)


def test_tensorrt_engines_are_cached_per_machine_beside_the_onnx_files(cache, monkeypatch, tmp_path):
    first = runtimes.tensorrt_cache()
    assert first == runtimes.tensorrt_cache()  # a restart finds the engines it built before
    assert os.path.commonpath([first, str(cache)]) == str(cache)
    assert os.path.basename(first) == f"onnxruntime-{runtimes.runtime_version('onnxruntime')}"  # an engine is tied to its TensorRT
    monkeypatch.setenv("RAYSEGMENT_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert runtimes.tensorrt_cache().startswith(str(tmp_path / "elsewhere"))


def test_paddle_config_calls_per_run_mode():
    assert config_calls("gpu", ("gpu", 0), 4) == [("enable_use_gpu", (GPU_MEMORY_POOL_MB, 0))]
    assert config_calls("gpu", ("gpu", 2), 4) == [("enable_use_gpu", (GPU_MEMORY_POOL_MB, 2))]
    assert config_calls("mkldnn", ("cpu", None), 3) == [("disable_gpu", ()), ("set_cpu_math_library_num_threads", (3,)),
                                                         ("enable_mkldnn", ())]
    assert config_calls("paddle", ("cpu", None), 1)[-1] == ("disable_mkldnn", ())
    assert config_calls("mkldnn_bf16", ("cpu", None), 2)[-2:] == [("enable_mkldnn", ()), ("enable_mkldnn_bfloat16", ())]


def test_the_cpu_config_calls_are_what_paddle_inference_takes():
    """The CPU lists drive paddle.inference.Config here: each method exists and takes its arguments."""
    from paddle import inference

    info = Predictor.load(BUNDLED_MODEL, InferenceOptions(engine="paddle"), "cpu").engine
    for mode in ("mkldnn", "paddle", "mkldnn_bf16"):
        config = inference.Config(*info.files)
        for method, args in config_calls(mode, ("cpu", None), 2):
            getattr(config, method)(*args)
        assert config.mkldnn_enabled() == mode.startswith("mkldnn") and config.cpu_math_library_num_threads() == 2


def test_engine_plans_on_gpu_per_engine_and_precision(cache):
    gpu = ("gpu", 0)
    auto = engine_plan(gpu, EngineSpec(), 4, GPU_BUILD)
    assert [(p["engine"], p["role"]) for p in auto] == [("paddle", "reference"), ("onnxruntime", "candidate")]
    assert auto[0]["mode"] == "gpu" and auto[0]["config"] == [("enable_use_gpu", (GPU_MEMORY_POOL_MB, 0))]
    assert [name for name, _ in auto[1]["providers"]] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    pinned = engine_plan(gpu, EngineSpec("paddle"), 4, GPU_BUILD)
    assert [(p["engine"], p["role"], p["mode"]) for p in pinned] == [("paddle", "engine", "gpu")]

    fp16 = engine_plan(gpu, EngineSpec("onnxruntime", precision="fp16"), 4, GPU_BUILD)
    assert fp16[1]["role"] == "engine" and fp16[1]["providers"][0] == ("TensorrtExecutionProvider", tensorrt_options(cache, 0, True))

    without_cuda = engine_plan(gpu, EngineSpec(), 4, CPU_BUILD)
    assert "pip install onnxruntime-gpu" in without_cuda[1]["error"]


def test_engine_plans_refuse_what_a_gpu_does_not_run():
    for spec, words in ((EngineSpec("openvino"), "engine openvino runs on CPUs"),
                        (EngineSpec(run_mode="mkldnn"), "run_mode mkldnn runs on CPUs"),
                        (EngineSpec(precision="bf16", engine="openvino"), "precision bf16 is a CPU mode"),
                        (EngineSpec(precision="int8", calibration_images="x"), "precision int8 is a CPU mode")):
        with pytest.raises(ValueError, match=words):
            engine_plan(("gpu", 0), spec, 1, GPU_BUILD)
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        engine_plan(("cpu", None), EngineSpec(precision="fp16"), 1, GPU_BUILD)


def test_engine_plan_on_cpu_keeps_int8_and_onednn_fallback():
    plan = engine_plan(("cpu", None), EngineSpec(precision="int8", calibration_images="x"), 2, CPU_BUILD)
    assert plan[0]["mode"] == "mkldnn" and "fallback" in plan[0]
    assert {p["engine"] for p in plan[1:]} <= {"openvino", "onnxruntime"}
    assert all(p["graph"].startswith("int8") for p in plan[1:])


def test_predictor_plan_for_a_gpu_process_touches_no_gpu():
    """Where Paddle has no GPU, load() on gpu:0 is refused; plan() says what load() would open there."""
    import paddle

    if not (paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count()):
        with pytest.raises(ValueError, match="asks for a GPU but none is available"):
            Predictor.load(BUNDLED_MODEL, device="gpu:0")
    plan = Predictor.plan(BUNDLED_MODEL, InferenceOptions(engine_config=EngineConfig(cpu_threads=3)), "gpu:0")
    assert plan["device"] == "gpu:0" and plan["threads"] == 3 and plan["model"] == "PP-LiteSeg-T"
    assert plan["engines"][0] == {"engine": "paddle", "role": "reference", "mode": "gpu",
                                  "config": [("enable_use_gpu", (GPU_MEMORY_POOL_MB, 0))]}
