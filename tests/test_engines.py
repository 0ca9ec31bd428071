"""The engines behind the Predictor: ONNX Runtime and OpenVINO on files paddle2onnx converts from
our folders, checked against Paddle's masks, and the default that picks among them per input shape."""

import glob
import logging
import os
import re
import shutil

import numpy as np
import paddle
import pytest

import raysegment
from raysegment.data import BUNDLED_MODEL, SAMPLES
from raysegment.infer.engines import quantize
from raysegment.infer.engines.choice import MAX_STATIC_SHAPES
from raysegment.infer.model_files import read_model_folder
from raysegment.infer.engines.conversion import ConversionError, cache_dir, onnx_file
from raysegment.models import build_model
from raysegment.models.layers import AdaptiveAvgPool

from conftest import CLASS_NAMES, random_image


def _inputs(model, h, w, n=2):
    return np.stack([model.predictor.preprocess(random_image(h, w, seed=s)) for s in range(n)])


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_pinned_engine_gives_paddles_masks(inference_dir, engine):
    model = raysegment.create_model(model_dir=inference_dir, engine=engine, device="cpu")
    plain = raysegment.create_model(model_dir=inference_dir, run_mode="paddle").predictor.engine
    x = _inputs(model, 96, 160)
    chosen = model.predictor.engine
    first = chosen(x)  # Paddle's answer, while the pinned engine is checked against it
    assert chosen.run_mode == {"onnxruntime": "onnxruntime", "openvino": "openvino:fp32"}[engine]
    assert "the pinned engine" in chosen.reason
    second = chosen(x)  # now the pinned engine's own
    np.testing.assert_array_equal(first, plain(x))
    assert (second == first).mean() >= 0.999
    assert len(np.unique(second)) > 1


@pytest.mark.slow
def test_swin_models_convert_with_their_built_in_tensors(maskformer_dir):
    """MaskFormer's Swin backbone makes tensors at build time (relative position indices), which the
    graph names by a counter of their own: they pair up with a fresh build's, one dynamic ONNX file."""
    assert onnx_file(read_model_folder(maskformer_dir)).endswith("_dynamic.onnx")
    model = raysegment.create_model(model_dir=maskformer_dir, engine="onnxruntime")
    x = _inputs(model, 64, 96, n=1)
    reference = model.predictor.engine(x)  # Paddle's, while ONNX Runtime is checked against it
    assert model.predictor.engine.run_mode == "onnxruntime"
    assert (model.predictor.engine(x) == reference).mean() >= 0.999


def test_default_picks_per_shape_and_says_why(inference_dir, caplog):
    model = raysegment.create_model(model_dir=inference_dir, device="cpu")
    engine = model.predictor.engine
    assert engine.run_mode == "chosen at the first input of each shape"
    with caplog.at_level(logging.INFO, logger="raysegment.infer.engines.choice"):
        engine(_inputs(model, 96, 160))
    note = engine.notes[(96, 160)]
    # every candidate was timed against Paddle, and the fastest serves the shape
    for name in ("onnxruntime", "openvino:fp32", "paddle:mkldnn"):
        assert f"{name} " in note and " ms" in note
    assert note.startswith(f"input 96x160: {engine.by_shape[(96, 160)].name}, the fastest engine whose masks equal Paddle's")
    assert [r.getMessage() for r in caplog.records if "input 96x160" in r.getMessage()]
    kept = list(engine._runtimes.values()) + ([engine._paddle] if engine._paddle else [])
    assert kept == [engine.by_shape[(96, 160)]]  # the engines that lost the race are dropped: only the winner holds memory


@pytest.mark.slow
def test_a_second_load_takes_the_choice_made_on_this_machine(inference_dir):
    first = raysegment.create_model(model_dir=inference_dir, device="cpu", cpu_threads=1)
    x = _inputs(first, 80, 112)
    first.predictor.engine(x)
    again = raysegment.create_model(model_dir=inference_dir, device="cpu", cpu_threads=1).predictor.engine
    out = again(x)
    chosen = again.by_shape[(80, 112)]
    assert chosen.name == first.predictor.engine.by_shape[(80, 112)].name
    assert again.notes[(80, 112)] == first.predictor.engine.notes[(80, 112)] + " (chosen earlier on this machine)"
    assert again._paddle is None or chosen.name.startswith("paddle:")  # no race, no Paddle reference unless chosen
    assert (out == first.predictor.engine.paddle(x)).mean() >= 0.999


def test_a_choice_made_by_a_sibling_while_this_process_waited_says_so(inference_dir, monkeypatch):
    """Bulk actors and replicas start together: one races, the others wait on the machine's lock and
    take its verdict. Here the sibling's verdict lands while this engine waits for the lock."""
    from raysegment.infer.engines import choice as engine_choice

    sibling = raysegment.create_model(model_dir=inference_dir, device="cpu", cpu_threads=1)
    x = _inputs(sibling, 72, 104)
    sibling.predictor.engine(x)
    engine = raysegment.create_model(model_dir=inference_dir, device="cpu", cpu_threads=1).predictor.engine
    verdict = engine._verdict_file((72, 104))
    with open(verdict, "rb") as f:
        chosen = f.read()
    os.remove(verdict)  # the cache is cold when this engine first looks
    real_lock = engine_choice.file_lock

    def lock_while_the_sibling_finishes(path):
        with open(verdict, "wb") as f:
            f.write(chosen)
        return real_lock(path)

    monkeypatch.setattr(engine_choice, "file_lock", lock_while_the_sibling_finishes)
    engine(x)
    assert engine.notes[(72, 104)] == sibling.predictor.engine.notes[(72, 104)] + " (chosen just now by another process on this machine)"


@pytest.mark.slow
def test_static_shape_models_convert_per_shape_and_cap_it(inference_dir):
    """PP-LiteSeg's adaptive pooling converts only at a static size: one cached ONNX file per shape,
    the dynamic try recorded as failed once, and past MAX_STATIC_SHAPES the rest stay on Paddle."""
    info = read_model_folder(inference_dir)
    with pytest.raises(ConversionError, match="Adaptive only support static input shape"):
        onnx_file(info)
    assert not [f for f in os.listdir(cache_dir()) if f.endswith(".work")]  # the aborted child's traced graph is gone
    model = raysegment.create_model(model_dir=inference_dir, engine="onnxruntime")
    engine = model.predictor.engine
    shapes = [(64, 64 + 32 * i) for i in range(MAX_STATIC_SHAPES + 1)]
    for h, w in shapes:
        engine(_inputs(model, h, w, n=1))
    files = sorted(f for f in os.listdir(cache_dir()) if f.startswith("PP-LiteSeg-T_") and f.endswith(".onnx"))
    assert {f"{h}x{w}" for h, w in shapes[:-1]} <= {f.rsplit("_", 1)[1].removesuffix(".onnx") for f in files}
    assert all(engine.by_shape[s].name == "onnxruntime" for s in shapes[:-1])
    last = shapes[-1]
    assert engine.by_shape[last].name == "paddle:mkldnn" and f"already has {MAX_STATIC_SHAPES}" in engine.notes[last]


def test_adaptive_pool_is_exact_when_traced_at_a_static_size():
    """A 15-wide map in 4 bins has windows of 4, 5, 5 and 4 columns: the sliced form equals Paddle's op."""
    pool = AdaptiveAvgPool(4)
    x = paddle.to_tensor(np.random.default_rng(0).normal(size=(2, 3, 12, 15)).astype("float32"))
    static = paddle.jit.to_static(pool, input_spec=[paddle.static.InputSpec([None, 3, 12, 15], "float32")], full_graph=True)
    np.testing.assert_allclose(static(x).numpy(), paddle.nn.functional.adaptive_avg_pool2d(x, 4).numpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def foreign_dir(tiny_layer, tmp_path_factory):
    """The tiny model exported by another tool, which names its weights unlike a fresh build (as
    PaddleX's official folders do): traced straight from a layer whose parameters are renamed."""
    from raysegment.infer.export import ArgmaxHead
    from raysegment.infer.model_files import ModelInfo, write_inference_yml

    layer = build_model("PP-LiteSeg-T", num_classes=len(CLASS_NAMES))
    layer.set_state_dict(tiny_layer.state_dict())
    for param in layer.parameters():
        param.name = f"other_{param.name}"
    layer.eval()
    folder = str(tmp_path_factory.mktemp("foreign"))
    static = paddle.jit.to_static(ArgmaxHead(layer), input_spec=[paddle.static.InputSpec([None, 3, None, None], "float32", "x")],
                                  full_graph=True)
    paddle.jit.save(static, os.path.join(folder, "inference"))
    write_inference_yml(folder, ModelInfo("PP-LiteSeg-T", CLASS_NAMES), exported=True)
    return folder


@pytest.mark.slow
def test_an_engine_that_cannot_take_the_model_falls_back_to_paddle(foreign_dir, inference_dir, caplog):
    model = raysegment.create_model(model_dir=foreign_dir, engine="openvino")
    x = _inputs(model, 96, 160)
    with caplog.at_level(logging.WARNING, logger="raysegment.infer.engines.choice"):
        first, second = model.predictor.engine(x), model.predictor.engine(x)
    engine = model.predictor.engine
    assert engine.run_mode == "paddle:mkldnn" and "openvino cannot run it" in engine.reason
    assert "do not match a fresh PP-LiteSeg-T build" in engine.reason
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # one clear line, no crash
    reference = raysegment.create_model(model_dir=inference_dir, run_mode="paddle").predictor.engine(x)
    np.testing.assert_array_equal(first, reference)
    np.testing.assert_array_equal(second, reference)


def test_bf16_is_opt_in_and_reports_its_agreement(inference_dir):
    model = raysegment.create_model(model_dir=inference_dir, engine_config={"precision": "bf16"})
    engine = model.predictor.engine
    assert engine.candidates == ["openvino"]
    engine(_inputs(model, 96, 160))
    assert engine.run_mode == "openvino:bf16" and "openvino:bf16 agrees with Paddle fp32 on" in engine.reason


def _calibration_folder(folder, n=16):
    """n JPEGs cycling through the bundled CamVid frames (the bundled model's own kind of image)."""
    samples = sorted(os.path.join(SAMPLES, f) for f in os.listdir(SAMPLES))
    folder.mkdir()
    for i in range(n):
        shutil.copyfile(samples[i % len(samples)], folder / f"cal_{i:02d}.jpg")
    return str(folder)


def test_int8_is_calibrated_on_the_named_images_once_per_machine(tmp_path, monkeypatch):
    # off its own 960x720, on 4 distinct frames, the model keeps ~0.94 mIoU against fp32's masks: the
    # margin is widened so this test checks the int8 path (the next one checks the margin's fallback)
    monkeypatch.setattr(quantize, "MIOU_MARGIN", 0.2)
    config = {"precision": "int8", "calibration_images": _calibration_folder(tmp_path / "cal")}
    model = raysegment.create_model(model_dir=BUNDLED_MODEL, device="cpu", target_size=-1, engine_config=config)
    engine = model.predictor.engine
    sample = os.path.join(SAMPLES, sorted(os.listdir(SAMPLES))[0])
    first = next(iter(model.predict(sample)))  # Paddle's answer, while the int8 engines are made and raced
    assert engine.run_mode in ("onnxruntime:int8", "openvino:int8"), engine.reason
    assert "the fastest int8 engine (opt-in)" in engine.reason and "int8 agrees with Paddle fp32 on" in engine.reason
    (int8,) = glob.glob(os.path.join(cache_dir(), "PP-LiteSeg-T_*_360x480_int8_*.onnx"))
    found = quantize.report(int8)
    assert (found["calibrated"], found["checked"]) == (14, 2)  # every eighth image held out to check
    assert found["miou_vs_fp32"] >= 1 - quantize.MIOU_MARGIN
    second = next(iter(model.predict(sample))).label_map  # the int8 engine's own
    assert (second == first.label_map).mean() >= 0.95
    made = os.stat(int8).st_mtime_ns
    again = raysegment.create_model(model_dir=BUNDLED_MODEL, device="cpu", target_size=-1, engine_config=config)
    np.testing.assert_array_equal(next(iter(again.predict(sample))).label_map, second)  # the choice and the file, reused
    assert again.predictor.engine.run_mode == engine.run_mode and os.stat(int8).st_mtime_ns == made


def test_int8_that_loses_too_much_runs_fp32_and_says_so_once(inference_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(quantize, "MIOU_MARGIN", -0.01)  # no graph keeps an mIoU above 1: the check must fail
    config = {"precision": "int8", "calibration_images": _calibration_folder(tmp_path / "cal")}
    model = raysegment.create_model(model_dir=inference_dir, device="cpu", engine_config=config)
    with caplog.at_level(logging.WARNING, logger="raysegment.infer.engines.choice"):
        model.predictor.engine(_inputs(model, 64, 96))
    (line,) = [r.getMessage() for r in caplog.records if "int8" in r.getMessage()]
    assert re.search(r"int8 kept mIoU [0-9.]+ against fp32's masks on 2 held-out calibration images, below 1.01; running fp32", line)
    assert model.predictor.engine.run_mode in ("onnxruntime", "openvino:fp32", "paddle:mkldnn")
    assert glob.glob(os.path.join(cache_dir(), "*_int8_*.onnx.failed"))  # remembered: not quantized again on this machine


def test_int8_refuses_too_few_calibration_images_by_name(inference_dir, tmp_path):
    config = {"precision": "int8", "calibration_images": _calibration_folder(tmp_path / "cal", n=5)}
    with pytest.raises(ValueError, match=r"calibration_images .* holds 5 images; int8 calibration needs at least 16"):
        raysegment.create_model(model_dir=inference_dir, device="cpu", engine_config=config)
