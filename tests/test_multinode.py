"""The README's cluster commands on a real multi-node Ray cluster: a head with no CPUs and three
1-CPU worker nodes, each a `ray start` process tree on this machine with token auth on
(tests/local_cluster.py). Jobs go in with `ray job submit --working-dir .`, the Serve app with
`serve deploy`; a worker node is killed (SIGKILL of its raylet and everything under it) during a
bulk job and during a training run.
"""

import json
import os
import re
import time
import urllib.request

import numpy as np
import pytest
import yaml

from conftest import jpeg_bytes, make_dataset, png_bytes, random_image
from local_cluster import BIN, LocalCluster, free_port
from raysegment import storage
from raysegment.infer.result import decode_mask

pytestmark = pytest.mark.slow  # a cluster of four `ray start` nodes, and jobs submitted to it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_NODES = 3


@pytest.fixture(scope="module")
def cluster(s3_server):
    """Started after the S3 server, so every node (and every job) talks to it."""
    import tempfile

    c = LocalCluster(tempfile.mkdtemp(prefix="rsc-", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        yield c.start(WORKER_NODES)
    finally:
        c.stop()


def kill_a_node_running(cluster, actor_class, killed):
    """Once: SIGKILL the node of one live `actor_class` actor, then start a fresh 1-CPU node in its
    place (as an autoscaler or KubeRay would)."""
    if killed:
        return
    nodes = sorted({node for node, state in cluster.actors(actor_class) if state == "ALIVE"})
    if nodes:
        cluster.kill_node(nodes[0])
        killed.append(nodes[0])
        cluster.add_worker()


def test_training_on_two_nodes_resumes_after_one_dies(cluster, tmp_path):
    root = make_dataset(tmp_path / "ds", n_train=8, n_val=2, size=(64, 64))
    out = tmp_path / "out"
    job = cluster.submit([
        "python", "jobs/train.py", "-c", "configs/PP-LiteSeg-T.yaml", "-o", f"Global.dataset_dir={root}", "-o", "Train.num_classes=3",
        "-o", f"Global.output={out}", "-o", "Ray.num_workers=2", "-o", "Train.epochs_iters=15", "-o", "Train.eval_interval=5",
        "-o", "Train.batch_size=2", "-o", "Train.crop_size=[64,64]", "-o", "Train.ohem_min_kept=100", "-o", "Train.log_interval=1",
        "-o", "Ray.max_failures=3", "-o", "Train.keep_checkpoints=10"], ROOT)
    killed, spread = [], set()

    def kill_after_the_first_checkpoint():
        alive = {node for node, state in cluster.actors("RayTrainWorker") if state == "ALIVE"}
        spread.update([frozenset(alive)] if len(alive) == 2 else [])
        if (out / "ray_results" / "ray_train" / "iter_5" / ".uploaded").exists():
            kill_a_node_running(cluster, "RayTrainWorker", killed)

    status, logs = cluster.wait_job(job, timeout=420, poll=kill_after_the_first_checkpoint)
    assert status == "SUCCEEDED", logs
    assert "iter 15/15 loss" in logs and "val mIoU" in logs, logs  # the workers' progress reaches `ray job logs`
    assert killed and spread, "the two workers never ran on two nodes, or no node was killed"
    result = json.loads((out / "train_result.json").read_text())
    assert result["iters"] == 15 and result["workers"] == 2 and result["workers_in_sync"]
    log = (out / "train.log").read_text()
    match = re.search(r"resumed from \S+ at iteration (\d+)", log)
    assert match, log
    resumed_at, after = int(match.group(1)), log[match.end():]
    assert resumed_at >= 5 and "iter 15/15" in after
    assert [int(n) for n in re.findall(r"iter (\d+)/15 loss", after) if int(n) <= resumed_at] == []  # nothing done twice


def test_a_relative_output_under_working_dir_is_refused_by_name(cluster, inference_dir):
    """The job runs in Ray's temporary copy of --working-dir: output/lost would vanish with it."""
    job = cluster.submit(["python", "jobs/predict.py", "--model-dir", inference_dir, "--input", "raysegment/data/samples",
                          "--output", "output/lost"], ROOT)
    status, logs = cluster.wait_job(job, timeout=180)
    assert status == "FAILED", logs
    assert "error: Predict.output 'output/lost' is relative, and this job runs in Ray's temporary copy of --working-dir" in logs


def test_bulk_job_over_s3_on_three_nodes_survives_one_dying(cluster, s3_bucket, inference_dir):
    n = 60
    for i in range(n):
        storage.write_bytes(f"s3://{s3_bucket}/in/{i:03d}.jpg", jpeg_bytes(random_image(240, 320, seed=i)))
    out = f"s3://{s3_bucket}/out"
    job = cluster.submit(["python", "jobs/predict.py", "--model-dir", inference_dir, "--input", f"s3://{s3_bucket}/in/",
                          "--output", out, "-o", "Ray.predict_batch_size=2", "-o", "Predict.batch_size=2"], ROOT)
    killed, nodes, finished_at_kill = [], set(), []

    def kill_once_actors_run_on_two_nodes():
        nodes.update(node for node, state in cluster.actors("PredictActor") if state == "ALIVE")
        if len(nodes) >= 2 and not killed:
            finished_at_kill.append(storage.exists(f"{out}/_SUCCESS.json"))
            kill_a_node_running(cluster, "PredictActor", killed)

    status, logs = cluster.wait_job(job, timeout=420, poll=kill_once_actors_run_on_two_nodes)
    assert status == "SUCCEEDED", logs
    assert len(nodes) >= 2, f"the actors ran on {len(nodes)} node(s)"  # defaults: one 1-CPU actor per node
    assert killed and finished_at_kill == [False], "no node was killed while the job was running"
    summary = json.loads(storage.read_bytes(f"{out}/_SUCCESS.json"))
    assert (summary["inputs"], summary["done"], summary["errors"]) == (n, n, 0)
    manifest = [json.loads(line) for line in storage.read_bytes(f"{out}/_manifest.jsonl").splitlines()]
    assert sorted(m["uri"] for m in manifest) == [f"s3://{s3_bucket}/in/{i:03d}.jpg" for i in range(n)]  # each once
    assert len(storage.list_files(out, (".png",))) == n


def test_serve_app_answers_through_the_cluster(cluster, tmp_path, inference_dir):
    """`serve deploy configs/serve.yaml` (the README's cluster path) with this test's port and model.
    The proxy stays on the head: on one machine, every node's proxy would bind the same port."""
    import subprocess

    import raysegment

    port = free_port()
    config = yaml.safe_load(open(os.path.join(ROOT, "configs", "serve.yaml")))
    config["proxy_location"] = "HeadOnly"
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["model_dir"] = inference_dir
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([f"{BIN}/serve", "deploy", str(path), "--address", cluster.address], env=cluster.env, check=True,
                   capture_output=True, timeout=120)
    try:
        deadline = time.time() + 240
        while True:
            try:
                ready = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5).read())
                break
            except OSError:
                assert time.time() < deadline, "the Serve app did not answer /ready"
                time.sleep(1)
        assert ready["ready"] and ready["model_dir"] == inference_dir
        # /ready answers from the first replica up; the others may still be starting
        deadline = time.time() + 120
        while len(replicas := {node for node, state in cluster.actors("Segmenter") if state == "ALIVE"}) < WORKER_NODES:
            assert time.time() < deadline, f"replicas on {len(replicas)} nodes"
            time.sleep(1)
        assert len(replicas) == WORKER_NODES  # defaults: one 1-CPU replica per CPU, one per node here
        image = random_image(64, 96, seed=3)
        expected = next(iter(raysegment.create_model(model_dir=inference_dir).predict(image[:, :, ::-1].copy())))["pred"][0]
        for _ in range(6):  # several requests: they spread over the replicas
            request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=png_bytes(image[:, :, ::-1]),
                                             headers={"Content-Type": "image/png"})
            answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
            np.testing.assert_array_equal(decode_mask(answer["mask"]), expected)
    finally:
        subprocess.run([f"{BIN}/serve", "shutdown", "-y", "--address", cluster.address], env=cluster.env, capture_output=True, timeout=120)
