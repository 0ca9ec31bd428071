"""The job entry points as users run them: separate processes, exit codes, files on disk."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import raysegment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "PP-LiteSeg-T.yaml")


def run_job(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "jobs", name), *args], capture_output=True, text=True, timeout=300)


def test_export_checkpoint_then_predict_cli(checkpoint_dir, image_dir, tmp_path):
    out = tmp_path / "inference"
    done = run_job("export.py", "-c", CONFIG, "-o", f"Export.weight_path={checkpoint_dir}", "-o", f"Global.output={out}")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ["inference.json", "inference.pdiparams", "inference.yml"]

    pred = tmp_path / "pred"
    done = run_job("predict.py", "--model-dir", str(out), "--input", str(image_dir), "--output", str(pred), "--batch-size", "2")
    assert done.returncode == 0, done.stderr
    assert "segmented 3 images with PP-LiteSeg-T" in done.stdout
    assert sorted(os.listdir(pred)) == ["a_res.jpg", "a_res.json", "b_res.json", "b_res.png", "c_res.jpg", "c_res.json"]

    # the exported folder predicts what the checkpoint predicts
    from raysegment.infer import decode_mask

    (expected,) = raysegment.create_model(model_dir=checkpoint_dir).predict(str(image_dir / "sub" / "b.png"))
    with open(pred / "b_res.json") as f:
        np.testing.assert_array_equal(decode_mask(json.load(f)["pred"]), expected["pred"][0])


def test_export_untrained_says_so(tmp_path):
    done = run_job("export.py", "-c", CONFIG, "--untrained", "-o", "Train.num_classes=5", "-o", f"Global.output={tmp_path / 'u'}")
    assert done.returncode == 0, done.stderr
    assert "exported UNTRAINED PP-LiteSeg-T" in done.stdout
    assert raysegment.create_model(model_dir=str(tmp_path / "u")).predictor.class_names == [f"class_{i}" for i in range(5)]


@pytest.mark.parametrize(
    "job,args,message",
    [
        ("export.py", ["-c", CONFIG], "pass exactly one of -o Export.weight_path=... or --untrained"),
        ("export.py", ["-c", CONFIG, "-o", "Export.weigth_path=x"], "Export: unknown key 'weigth_path'"),
        ("predict.py", ["--input", "x"], "pass --model-dir and --input"),
        ("predict.py", ["-c", CONFIG, "-o", "Predict.batch_size=zero"], "Predict.batch_size: expected int, got 'zero'"),
    ],
)
def test_job_usage_errors_exit_2_with_one_clear_line(job, args, message):
    done = run_job(job, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_job_runtime_errors_are_one_line(tmp_path):
    done = run_job("predict.py", "--model-dir", str(tmp_path / "missing"), "--input", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: model folder '{tmp_path / 'missing'}' does not exist")
    assert "Traceback" not in done.stderr
