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


@pytest.mark.slow
def test_export_checkpoint_then_predict_cli(checkpoint_dir, image_dir, tmp_path):
    out = tmp_path / "inference"
    done = run_job("export.py", "-c", CONFIG, "-o", f"Export.weight_path={checkpoint_dir}", "-o", f"Global.output={out}")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ["inference.json", "inference.pdiparams", "inference.yml"]

    pred = tmp_path / "pred"
    done = run_job("predict.py", "--model-dir", str(out), "--input", str(image_dir), "--output", str(pred), "--batch-size", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 inputs: 3 done, 0 errors" in done.stdout
    for noise in ("Token authentication is enabled", "has constructor arguments in the object store"):
        assert noise not in done.stderr, done.stderr  # nothing a user can act on
    files = sorted(str(p.relative_to(pred)) for p in pred.rglob("*") if p.is_file())
    assert files == ["_SUCCESS.json", "_errors.jsonl", "_manifest.jsonl", "a.json", "a.png", "sub/b.json", "sub/b.png", "sub/c.json", "sub/c.png"]

    # the exported folder predicts what the checkpoint predicts
    from raysegment.data.dataset import decode_label

    (expected,) = raysegment.create_model(model_dir=checkpoint_dir).predict(str(image_dir / "sub" / "b.png"))
    np.testing.assert_array_equal(decode_label((pred / "sub" / "b.png").read_bytes()), expected["pred"][0])


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
        ("serve.py", ["--model-dir", ".", "-o", "max_batch=4"], "args: unknown key 'max_batch'; did you mean 'max_batch_size'?"),
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


def test_serve_refuses_a_folder_that_is_no_model_before_ray_starts(tmp_path):
    done = run_job("serve.py", "--model-dir", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: model folder '{tmp_path}' has no inference.yml; "
                                                "is it an exported inference folder or a checkpoint?"]
    assert "Ray" not in done.stdout


def test_check_dataset_cli_passes_and_fails(tmp_path):
    from conftest import make_dataset

    root = make_dataset(tmp_path / "ds")
    done = run_job("check_dataset.py", "-c", CONFIG, "-o", f"Global.dataset_dir={root}", "-o", f"Global.output={tmp_path / 'o'}")
    assert done.returncode == 0, done.stderr
    assert "3 classes, 6 train and 3 val samples" in done.stdout and "check passed" in done.stdout
    (root / "val.txt").write_text("images/val_0.jpg\n")
    done = run_job("check_dataset.py", "-c", CONFIG, "-o", f"Global.dataset_dir={root}", "-o", f"Global.output={tmp_path / 'o'}")
    assert done.returncode == 1
    assert "val.txt:1: expected 'image_path label_path', got 1 path" in done.stdout and "check FAILED" in done.stdout


def test_main_module_dispatches_on_global_mode(tmp_path):
    """`python -m raysegment -c ...` and the `raysegment` console script: PaddleX's main.py."""
    from conftest import make_dataset

    root = make_dataset(tmp_path / "ds")
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "raysegment"), "-c", CONFIG, "-o", "Global.mode=check_dataset",
                           "-o", f"Global.dataset_dir={root}", "-o", f"Global.output={tmp_path / 'o'}"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "o" / "check_dataset_result.json").read_text())["check_pass"] is True
    done = subprocess.run([sys.executable, "-m", "raysegment", "-c", CONFIG, "-o", "Global.mode=train"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 1 and "error: set Global.dataset_dir" in done.stderr


@pytest.mark.slow
def test_evaluate_cli_on_a_local_ray(tmp_path, inference_dir):
    from conftest import CLASS_NAMES, make_dataset

    root = make_dataset(tmp_path / "ds", n_val=2)
    (root / "labels.txt").write_text("".join(f"{n}\n" for n in CLASS_NAMES))
    done = run_job("evaluate.py", "-c", CONFIG, "-o", f"Global.dataset_dir={root}", "-o", f"Global.output={tmp_path / 'e'}",
                   "-o", f"Evaluate.weight_path={inference_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "evaluated 2 of 2 val samples: mIoU" in done.stdout
    assert "2/2 val samples evaluated" in done.stdout  # the progress line Evaluate.log_interval paces
    result = json.loads((tmp_path / "e" / "evaluate_result.json").read_text())
    assert result["metrics"]["class_names"] == CLASS_NAMES and 0 <= result["metrics"]["mIoU"] <= 1
