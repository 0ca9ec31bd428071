"""PaddleX's pipeline workflow: create_pipeline over PaddleX's pipeline YAML, and the `raysegment` CLI."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

import raysegment
from conftest import jpeg_bytes, pdf_bytes, random_image
from raysegment.config import ConfigError
from raysegment.pipeline import load_pipeline_config, module_options
from test_serve import PADDLEX_PIPELINE_FILE

RAYSEGMENT = os.path.join(os.path.dirname(sys.executable), "raysegment")


@pytest.fixture
def pipeline_file(tmp_path, inference_dir):
    path = tmp_path / "semantic_segmentation.yaml"
    path.write_text(PADDLEX_PIPELINE_FILE.format(model_dir=inference_dir))
    return path


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg_bytes(random_image(48, 64, seed=1)))
    (folder / "b.jpg").write_bytes(jpeg_bytes(random_image(40, 40, seed=2)))
    (folder / "doc.pdf").write_bytes(pdf_bytes(random_image(32, 48, seed=3)))
    return folder


@pytest.mark.slow
def test_a_paddlex_pipeline_file_predicts_as_create_model(pipeline_file, inference_dir, inputs):
    pipeline = raysegment.create_pipeline(pipeline=str(pipeline_file))
    model = raysegment.create_model(model_dir=inference_dir)
    got = list(pipeline.predict(str(inputs)))
    want = list(model.predict(str(inputs)))
    assert [(os.path.basename(r["input_path"]), r["page_index"]) for r in got] == [("a.jpg", None), ("b.jpg", None), ("doc.pdf", 0)]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g["pred"], w["pred"])
    (small,) = pipeline(str(inputs / "a.jpg"), target_size=32)
    (small_want,) = model.predict(str(inputs / "a.jpg"), target_size=32)
    np.testing.assert_array_equal(small["pred"], small_want["pred"])
    with pytest.raises(TypeError, match="unexpected keyword"):
        list(pipeline.predict(str(inputs), use_doc_unwarping=True))


def test_the_module_keys_do_what_they_say(tmp_path, inference_dir):
    raw = yaml.safe_load(PADDLEX_PIPELINE_FILE.format(model_dir=inference_dir))
    raw["SubModules"]["SemanticSegmentation"].update(batch_size=2, target_size=[32, 32], engine="paddle")
    raw["engine"] = "onnxruntime"  # the module's own key wins over the file's top level
    pipeline = raysegment.create_pipeline(config=raw)
    assert pipeline.batch_size == 2 and pipeline.model.predictor.target_size == (32, 32)
    assert pipeline.model.predictor.engine.run_mode in ("mkldnn", "paddle")  # Paddle Inference, not ONNX Runtime
    (res,) = pipeline.predict(random_image(64, 64))
    assert res["pred"].shape == (1, 64, 64)  # predicted at 32x32, mapped back to the image
    cfg = load_pipeline_config(config={**raw, "SubModules": {"SemanticSegmentation": {"model_dir": inference_dir}}})
    assert module_options(cfg, engine="openvino").engine == "openvino"  # the argument, over the file's top level
    assert module_options(cfg).engine == "onnxruntime"


@pytest.mark.parametrize("change, words", [
    ({"pipeline_name": "OCR"}, "pipeline.pipeline_name: 'OCR' is not one of semantic_segmentation"),
    ({"SubModules": {"SemanticSegmentation": {"modle_dir": "x"}}}, "pipeline.SubModules.SemanticSegmentation: unknown key 'modle_dir'"),
    ({"SubModules": {"SemanticSegmentation": {"batch_size": 0}}}, "batch_size: 0 is below the minimum 1"),
    ({"SubModules": {"SemanticSegmentation": {"engine": "tensorflow"}}}, "engine: 'tensorflow' is not one of"),
])
def test_bad_pipeline_keys_are_refused_by_name(change, words):
    with pytest.raises(ConfigError, match=words):
        raysegment.create_pipeline(config=change)


def test_the_pipeline_name_uses_paddlex_s_official_model(tmp_path, inference_dir, monkeypatch):
    monkeypatch.setenv("PADDLE_PDX_CACHE_HOME", str(tmp_path))
    shutil.copytree(inference_dir, tmp_path / "official_models" / "PP-LiteSeg-T")
    pipeline = raysegment.create_pipeline(pipeline="semantic_segmentation")
    assert pipeline.model.model_name == "PP-LiteSeg-T" and pipeline.batch_size == 1


def run_cli(*args, cwd=None):
    return subprocess.run([RAYSEGMENT, *args], capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.mark.slow
def test_cli_writes_the_pipeline_config_then_predicts_with_it(tmp_path, inference_dir, inputs):
    done = run_cli("--get_pipeline_config", "semantic_segmentation", "--save_path", str(tmp_path / "cfg"))
    assert done.returncode == 0, done.stderr
    path = tmp_path / "cfg" / "semantic_segmentation.yaml"
    assert load_pipeline_config(str(path)) == load_pipeline_config("semantic_segmentation")
    again = run_cli("--get_pipeline_config", "semantic_segmentation", "--save_path", str(tmp_path / "cfg"))
    assert again.returncode == 1 and "already exists" in again.stderr
    path.write_text(path.read_text().replace("model_dir: null", f"model_dir: {inference_dir}"))

    out = tmp_path / "out"
    done = run_cli("--pipeline", str(path), "--input", str(inputs), "--device", "cpu", "--save_path", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ["a_res.jpg", "a_res.json", "b_res.jpg", "b_res.json", "doc_0_res.json", "doc_0_res.png"]
    assert done.stdout.count('"input_path"') == 3
    model = raysegment.create_model(model_dir=inference_dir)
    for res in model.predict(str(inputs)):
        saved = raysegment.infer.decode_mask(yaml.safe_load((out / os.path.basename(res.save_to_json(str(tmp_path / "x")))).read_text())["pred"])
        np.testing.assert_array_equal(saved, res["pred"][0])

    bad = run_cli("--pipeline", str(path), "--input", str(tmp_path / "missing.jpg"))
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "missing.jpg" in bad.stderr
    assert run_cli("--pipeline", str(path)).returncode == 2  # no --input: usage error
    both = run_cli("-c", "configs/PP-LiteSeg-T.yaml", "--pipeline", str(path))
    assert both.returncode == 2 and "two commands" in both.stderr
