"""GPU placement on Ray clusters that declare GPUs they do not have: Ray hands each process its GPUs
and sets CUDA_VISIBLE_DEVICES all the same. Each front door's dry run (raysegment/dry_run.py) places
its processes as the real run does, and they report what they see and what they would compute
with, stopping where Paddle would touch CUDA. One node declaring 2 GPUs (jobs/gpu_check.py
--dry-run, `ray.init(num_gpus=2)`), and the multi-node layout of test_multinode.py with a GPU
declared on each worker node (`ray start --num-gpus=1`)."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

from conftest import make_dataset
from local_cluster import LocalCluster

pytestmark = pytest.mark.slow  # Ray Train, Ray Data, Serve and Tune started for each plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def steps_of(result):
    return {row["step"]: row["plan"] for row in result["steps"]}


def gpu_check_dry_run(tmp_path, *args, env=None):
    out = tmp_path / "plan.json"
    env = {**(env or os.environ), "RAYSEGMENT_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "jobs/gpu_check.py", "--dry-run", "--out", str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (tmp_path / "cache").exists()  # nothing converted, compiled or built: no engine was opened
    return json.loads(out.read_text()), done.stdout


def one_gpu_each(processes):
    """Each process saw exactly the one GPU Ray gave it, as CUDA_VISIBLE_DEVICES, and computes on gpu:0."""
    for p in processes:
        assert len(p["ray_gpu_ids"]) == 1 and p["cuda_visible_devices"] == p["ray_gpu_ids"][0], p
        assert p["device"] == "gpu:0", p


def test_cpu_training_uses_gloo_without_sync_batch_norm_or_amp(ray_local, tmp_path):
    from raysegment.config import load_config
    from raysegment.train.ray_train import plan

    data = make_dataset(tmp_path / "ds", n_train=4, n_val=1)
    cfg = load_config("configs/PP-LiteSeg-T.yaml", [f"Global.dataset_dir={data}", "Train.num_classes=3", "Global.device=cpu",
                                                    "Ray.num_workers=2", "Ray.cpus_per_worker=0.5", "Train.amp=true",
                                                    f"Global.output={tmp_path / 'out'}"])
    result = plan(cfg)
    assert [(p["rank"], p["world"], p["device"], p["backend"], p["sync_batch_norm"], p["amp"]) for p in result["processes"]] == \
        [(0, 2, "cpu", "gloo", False, False), (1, 2, "cpu", "gloo", False, False)]
    assert result["placement"]["gpus"] == 0 and not any(p["ray_gpu_ids"] for p in result["processes"])
    assert not (tmp_path / "out" / "train_result.json").exists()  # planned, not trained


def test_gpu_check_dry_run_on_one_node_declaring_two_gpus(tmp_path):
    result, printed = gpu_check_dry_run(tmp_path)  # no GPU here: 2 declared, with 8 CPUs to feed them
    assert result["dry_run"] and result["gpus"] == 2 and result["declared_gpus"] == 2
    steps = steps_of(result)
    assert list(steps) == ["engines", "train-1", "train-2", "bulk", "serve"]
    for row in result["steps"]:
        assert row["step"] in printed and row["budget_s"] > 0

    one = steps["train-1"]["processes"]
    one_gpu_each(one)
    assert [(p["world"], p["backend"], p["sync_batch_norm"], p["amp"]) for p in one] == [(1, None, False, True)]

    two = steps["train-2"]["processes"]
    one_gpu_each(two)
    assert [p["rank"] for p in two] == [0, 1] and {p["cuda_visible_devices"] for p in two} == {"0", "1"}
    assert all(p["backend"] == "nccl" and p["sync_batch_norm"] and p["amp"] for p in two)

    for name in ("bulk", "serve"):  # one actor (replica) per GPU, each reserving a whole one
        placed = steps[name]
        assert placed["placement"]["count"] == 2 and placed["placement"]["gpus"] == 1.0
        one_gpu_each(placed["processes"])
        assert {p["cuda_visible_devices"] for p in placed["processes"]} == {"0", "1"}
        for p in placed["processes"]:
            paddle = p["engines"][0]
            assert (paddle["engine"], paddle["mode"], paddle["config"]) == ("paddle", "gpu", [["enable_use_gpu", [256, 0]]])
    assert steps["bulk"]["read_step"] == {"num_cpus": 0.5} and steps["bulk"]["inputs"] == 300

    engines = steps["engines"]
    assert engines["paddle fp32"] == [{"engine": "paddle", "role": "engine", "mode": "gpu", "config": [["enable_use_gpu", [256, 0]]]}]
    assert engines["onnxruntime fp16"][1]["precision"] == "fp16"


@pytest.fixture(scope="module")
def gpu_nodes():
    """A head without CPUs and two worker nodes of 2 CPUs and 1 declared GPU each."""
    c = LocalCluster(tempfile.mkdtemp(prefix="rsg-", dir="/tmp"))
    try:
        yield c.start(workers=2, cpus=2, gpus=1)
    finally:
        c.stop()


def test_gpu_check_dry_run_spreads_over_gpu_nodes(gpu_nodes, tmp_path):
    result, _ = gpu_check_dry_run(tmp_path, "--address", f"127.0.0.1:{gpu_nodes.port}", env=gpu_nodes.env)
    assert result["gpus"] == 2 and result["declared_gpus"] is None
    steps = steps_of(result)
    for name in ("train-2", "bulk", "serve"):
        processes = steps[name]["processes"]
        one_gpu_each(processes)
        assert len({p["node"] for p in processes}) == 2, name  # one per GPU node
        assert {p["cuda_visible_devices"] for p in processes} == {"0"}  # each node's own GPU 0
    assert all(p["backend"] == "nccl" and p["sync_batch_norm"] for p in steps["train-2"]["processes"])


PLANS = textwrap.dedent("""
    import json, sys
    from raysegment.config import ServeOptions, load_config, parse_options
    from raysegment.data import BUNDLED_MODEL
    from raysegment.ray_env import init_ray
    from raysegment.serve.run import plan as plan_serve
    from raysegment.train.tune import plan_trials

    init_ray(sys.argv[1])
    base = [f"Global.dataset_dir={sys.argv[2]}", "Train.num_classes=3", "Global.device=gpu", f"Global.output={sys.argv[3]}"]
    in_process = plan_trials(load_config("configs/PP-LiteSeg-T.yaml", base + ["Ray.num_workers=0"]), 4)
    ray_train = plan_trials(load_config("configs/PP-LiteSeg-T.yaml", base + ["Ray.num_workers=1"]), 2)
    shared = plan_serve(parse_options(ServeOptions, {"model_dir": BUNDLED_MODEL, "gpus_per_replica": 0.5, "num_replicas": 4,
                                                    "cpus_per_replica": 0.5, "port": int(sys.argv[4])}, "args"))
    with open(sys.argv[5], "w") as f:
        json.dump({"tune": in_process, "tune_ray_train": ray_train, "serve": shared}, f)
""")


def test_tune_trials_take_whole_gpus_and_serve_places_fractions_as_asked(gpu_nodes, tmp_path):
    from local_cluster import free_port

    data = make_dataset(tmp_path / "ds", n_train=4, n_val=1)
    out = tmp_path / "plans.json"
    done = subprocess.run([sys.executable, "-c", PLANS, f"127.0.0.1:{gpu_nodes.port}", str(data), str(tmp_path / "out"), str(free_port()),
                           str(out)], cwd=ROOT, env=gpu_nodes.env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    plans = json.loads(out.read_text())

    tune = plans["tune"]
    assert tune["trial_resources"] == {"cpu": 1.0, "gpu": 1.0} and tune["trials_at_once"] == 2
    assert sorted(t["trial"] for t in tune["processes"]) == [0, 1, 2, 3]
    one_gpu_each(tune["processes"])

    per_trial_run = plans["tune_ray_train"]  # each trial drives a Ray Train run whose worker takes the GPU
    assert per_trial_run["trial_resources"] == {"cpu": 0, "memory": 1 << 20} and per_trial_run["trials_at_once"] == 2
    assert all(t["ray_gpu_ids"] == [] for t in per_trial_run["processes"])
    workers = [w for t in per_trial_run["processes"] for w in t["workers"]]
    assert len(workers) == 2
    one_gpu_each(workers)

    serve = plans["serve"]
    assert serve["placement"]["gpus"] == 0.5 and len(serve["processes"]) == 4
    by_node = {}
    for replica in serve["processes"]:
        assert replica["device"] == "gpu:0" and replica["ray_gpu_ids"] == ["0"] == [replica["cuda_visible_devices"]]
        by_node[replica["node"]] = by_node.get(replica["node"], 0) + 1
    assert sorted(by_node.values()) == [2, 2]  # two replicas share each node's GPU


def test_the_jobs_dry_runs_print_where_their_processes_go(gpu_nodes, tmp_path):
    """`--dry-run` on jobs/train.py, predict.py and serve.py: the plan as JSON, nothing trained or written."""
    from local_cluster import free_port

    from raysegment.data import BUNDLED_MODEL

    data = make_dataset(tmp_path / "ds", n_train=4, n_val=1)
    env = {**gpu_nodes.env, "RAY_ADDRESS": f"127.0.0.1:{gpu_nodes.port}"}
    commands = {
        "train": ["jobs/train.py", "-c", "configs/PP-LiteSeg-T.yaml", "-o", f"Global.dataset_dir={data}", "-o", "Train.num_classes=3",
                  "-o", f"Global.output={tmp_path / 'train'}", "-o", "Global.device=gpu:0,1", "-o", "Train.batch_size=2"],
        "predict": ["jobs/predict.py", "--model-dir", BUNDLED_MODEL, "--input", "raysegment/data/samples", "--output",
                    str(tmp_path / "masks"), "-o", "Global.device=gpu"],
        "serve": ["jobs/serve.py", "--model-dir", BUNDLED_MODEL, "-o", "device=gpu", "--port", str(free_port())],
    }
    for name, command in commands.items():
        done = subprocess.run([sys.executable, *command, "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        planned = json.JSONDecoder().raw_decode(done.stdout[done.stdout.index("{\n"):])[0]  # Ray's own lines may follow
        assert len(planned["processes"]) == 2 and len({p["node"] for p in planned["processes"]}) == 2, name
        one_gpu_each(planned["processes"])
    assert planned["processes"][0]["engines"][0]["mode"] == "gpu"
    assert not (tmp_path / "masks").exists() and not (tmp_path / "train" / "train_result.json").exists()


def test_gpu_check_runs_its_steps_for_real_on_cpu(tmp_path):
    """The check's own glue (engines against CPU Paddle, Serve under load), small, on CPUs: what a GPU
    machine runs with --device gpu. A step asked for by a wrong name is refused by name."""
    out = tmp_path / "check.json"
    env = {**os.environ, "RAYSEGMENT_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    wrong = subprocess.run([sys.executable, "jobs/gpu_check.py", "--device", "cpu", "--steps", "engines,trian-1"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "trian-1 is not a step; steps: engines, train-1" in wrong.stderr, wrong.stderr
    done = subprocess.run([sys.executable, "jobs/gpu_check.py", "--device", "cpu", "--quick", "--steps", "engines,serve", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert [(s["step"], s["error"]) for s in result["steps"]] == [("engines", None), ("serve", None)]
    engines = result["steps"][0]["rows"]
    assert set(engines) == {"paddle fp32", "onnxruntime fp32", "openvino fp32", "auto fp32"}
    for row in engines.values():  # every engine ran the bundled model and gave CPU Paddle's masks
        assert row["images_per_s"] > 0 and row["agreement_with_cpu_paddle"] > 0.999, row
    for row in result["steps"][1]["rows"].values():
        assert row["statuses"] == {"200": row["requests"]} and row["requests"] > 0
