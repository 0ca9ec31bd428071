"""jobs/tune.py on a local Ray: trials that are real training runs, ASHA, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import pytest
import yaml

from conftest import make_dataset
from raysegment.config import ConfigError
from raysegment.train.tune import Search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["-o", "Train.num_classes=3", "-o", "Train.batch_size=2", "-o", "Train.crop_size=[32,32]", "-o", "Train.eval_interval=2"]


def tune_command(dataset, out, iters, *extra):
    return [sys.executable, os.path.join(ROOT, "jobs", "tune.py"), "-c", os.path.join(ROOT, "configs", "PP-LiteSeg-T.yaml"),
            "-o", f"Global.dataset_dir={dataset}", "-o", f"Global.output={out}", "-o", f"Train.epochs_iters={iters}", *TINY, *extra]


def run_tune(ray, *args):
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    return subprocess.run(tune_command(*args), capture_output=True, text=True, timeout=600, env=env)


def trial_config(row):
    with open(os.path.join(row["output"], "config.yaml")) as f:
        return yaml.safe_load(f)


@pytest.mark.slow
def test_two_trials_of_ray_train_runs_give_a_result_file_a_plot_and_a_table(tmp_path, ray_local):
    dataset, out = make_dataset(tmp_path / "ds"), tmp_path / "tune"
    done = run_tune(ray_local, dataset, out, 4, "--grid", "Train.learning_rate=0.01,0.001")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "tune_result.json").read_text())
    assert result["searched"] == [{"key": "Train.learning_rate", "kind": "grid", "values": [0.01, 0.001]}]
    assert result["trial_resources"]["workers"] == 1  # each trial a Ray Train run
    rows = result["trials"]
    assert sorted(r["config"]["Train.learning_rate"] for r in rows) == [0.001, 0.01]
    for row in rows:
        assert row["status"] == "done" and row["iters"] == 4 and row["error"] is None
        assert 0.0 <= row["best_mIoU"] <= 1.0 and row["best_iter"] in (2, 4)
        assert row["best_mIoU"] == max(row["mIoU_by_iter"].values())
        # the searched value reached the trial's training run, which wrote a normal run's outputs
        assert trial_config(row)["Train"]["learning_rate"] == row["config"]["Train.learning_rate"]
        train_result = json.loads((out / "trials" / os.path.basename(row["output"]) / "train_result.json").read_text())
        assert train_result["workers"] == 1 and round(train_result["best_metrics"]["mIoU"], 4) == row["best_mIoU"]
    assert result["best"] == max(rows, key=lambda r: r["best_mIoU"])
    plot = cv2.imread(str(out / "tune_result.png"))
    assert plot is not None and plot.shape[0] > 100 and plot.shape[1] > 100
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("Train.learning_rate"))
    assert "best val mIoU" in lines[header] and len(lines[header + 2: header + 4]) == 2
    assert f"{result['best']['best_mIoU']:.4f}" in lines[header + 2]  # best first


@pytest.mark.slow
def test_asha_stops_trials_below_the_leaders_at_a_rung(tmp_path, ray_local):
    dataset, out = make_dataset(tmp_path / "ds"), tmp_path / "tune"
    done = run_tune(ray_local, dataset, out, 6, "-o", "Ray.num_workers=0", "--grid", "Train.learning_rate=0.01,0.05,0.001,0.1",
                    "--scheduler", "asha", "--grace-iters", "2", "--max-concurrent", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "tune_result.json").read_text())
    assert result["trial_resources"]["workers"] == 0 and result["trials_at_once"] == 1
    rows = result["trials"]
    stopped = [r for r in rows if r["status"] == "stopped early"]
    assert stopped and any(r["status"] == "done" and r["iters"] == 6 for r in rows)
    for row in stopped:
        rung = row["iters"]
        assert rung in (2, 4)
        # ASHA stops a trial only below what another trial reached at the same rung
        others = [r["mIoU_by_iter"][str(rung)] for r in rows if r is not row and str(rung) in r["mIoU_by_iter"]]
        assert others and row["mIoU_by_iter"][str(rung)] < max(others)


@pytest.mark.slow
def test_a_killed_experiment_resumes_without_redoing_finished_trials(tmp_path, ray_local):
    from ray._private.state import actors  # the GCS's table: the state API needs the dashboard, which tests leave off

    dataset, out = make_dataset(tmp_path / "ds"), tmp_path / "tune"
    args = (dataset, out, 8, "-o", "Ray.num_workers=0", "--grid", "Train.learning_rate=0.01,0.001", "--max-concurrent", "1")
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.Popen(tune_command(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def second_trial_started():
        trials = [t for t in (out / "trials").iterdir()] if (out / "trials").is_dir() else []
        finished = [t for t in trials if (t / "train_result.json").exists()]
        return finished and any((t / "iter_2" / "train_state.json").exists() for t in trials if t not in finished)

    deadline = time.time() + 300
    while time.time() < deadline and not second_trial_started() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert second_trial_started(), "the experiment did not get to its second trial"
    assert not (out / "tune_result.json").exists()
    (first,) = [t for t in (out / "trials").iterdir() if (t / "train_result.json").exists()]
    first_mtime = (first / "train_result.json").stat().st_mtime
    deadline = time.time() + 60  # Ray ends the killed driver's trial process; wait for it before rerunning
    while time.time() < deadline and any("_trial" in a["ActorClassName"] for a in actors(actor_state_name="ALIVE").values()):
        time.sleep(0.5)

    done = run_tune(ray_local, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "tune_result.json").read_text())["trials"]
    assert [r["status"] for r in rows] == ["done", "done"] and all(r["iters"] == 8 for r in rows)
    assert (first / "train_result.json").stat().st_mtime == first_mtime  # not trained again
    (second,) = [t for t in (out / "trials").iterdir() if t != first]
    assert "resumed from" in (second / "train.log").read_text()  # continued from its own checkpoint


def test_search_arguments_are_checked_before_anything_runs(tmp_path):
    assert Search.parse("grid", "Train.learning_rate=0.01,0.005").values == (0.01, 0.005)
    assert Search.parse("grid", "Train.crop_size=[[32,32],[64,32]]").values == ([32, 32], [64, 32])
    with pytest.raises(ConfigError, match="lo < hi"):
        Search.parse("loguniform", "Train.learning_rate=0.1,0.01")
    base = {"Train": {}}
    with pytest.raises(ConfigError, match="Train: unknown key 'learning_rat'"):
        Search.parse("grid", "Train.learning_rat=0.1").check(base)
    with pytest.raises(ConfigError, match="Train.batch_size: 0 is below the minimum 1"):
        Search.parse("choice", "Train.batch_size=4,0").check(base)
    dataset = make_dataset(tmp_path / "ds")
    done = subprocess.run(tune_command(dataset, tmp_path / "t", 4, "--grid", "Train.momentum=fast"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Train.momentum: expected float" in done.stderr
