"""Resource sizing from config sections (raysegment/ray_env.py), and the light package import."""

import subprocess
import sys

import pytest

from raysegment.config import ConfigError, ServeOptions, load_config, parse_options
from raysegment.ray_env import Cluster, parse_device, predict_actors, serve_replicas, train_workers, tune_trials


TWO_CPUS = Cluster(((2.0, 0.0),))
LAPTOP = Cluster(((8.0, 0.0),))
THREE_SMALL_NODES = Cluster(((0.0, 0.0), (1.0, 0.0), (1.0, 0.0), (1.0, 0.0)))  # a head with no CPUs, three 1-CPU workers
GPU_NODES = Cluster(((16.0, 4.0), (16.0, 4.0)))


@pytest.mark.parametrize("cluster,overrides,expected", [
    # defaults: one single-thread actor per CPU, reads fused into them
    (TWO_CPUS, [], (2, 1.0, 0.0, 1, "cpu")),
    (LAPTOP, [], (8, 1.0, 0.0, 1, "cpu")),
    (THREE_SMALL_NODES, [], (3, 1.0, 0.0, 1, "cpu")),
    # a count set: the CPUs shared out between them, threads from the CPUs each gets
    (TWO_CPUS, ["Ray.predict_concurrency=1"], (1, 2.0, 0.0, 2, "cpu")),
    (LAPTOP, ["Ray.predict_concurrency=3"], (3, 2.65, 0.0, 2, "cpu")),  # 8/3 in steps of 1/20
    (TWO_CPUS, ["Ray.predict_concurrency=3", "Ray.cpus_per_actor=0.5", "Ray.threads_per_actor=4"], (3, 0.5, 0.0, 4, "cpu")),  # set values win
    (TWO_CPUS, ["Predict.engine_config.cpu_threads=3"], (2, 1.0, 0.0, 3, "cpu")),  # PaddleX's key sizes the threads too
    # GPUs: one actor per GPU reserving one CPU, threads from the CPUs of its node
    (GPU_NODES, ["Global.device=gpu"], (8, 1.0, 1.0, 4, "gpu")),
    (GPU_NODES, ["Global.device=gpu:0,1", "Ray.gpus_per_actor=0.5"], (2, 1.0, 0.5, 16, "gpu")),  # a GPU list is the actor count
])
def test_predict_actors_are_sized_to_the_cluster(cluster, overrides, expected):
    """Placement.threads is the one number every engine of the job computes with."""
    p = predict_actors(load_config(None, overrides), cluster)
    assert (p.count, p.cpus, p.gpus, p.threads, p.device) == expected
    assert p.ray_options == {"num_cpus": expected[1], "num_gpus": expected[2]}


@pytest.mark.parametrize("cluster,overrides,match", [
    (TWO_CPUS, ["Ray.predict_concurrency=3", "Ray.cpus_per_actor=1"], r"Ray.predict_concurrency=3 .* at most 2 fit: set Ray.predict_concurrency to 2"),
    (TWO_CPUS, ["Ray.cpus_per_actor=3"], r"one process of 3 CPUs \(Ray.cpus_per_actor\) fits on no node"),
    (TWO_CPUS, ["Ray.predict_concurrency=9"], r"Ray.predict_concurrency=9 processes of 0.25 CPUs .* at most 8 fit"),
    (THREE_SMALL_NODES, ["Ray.predict_concurrency=2", "Ray.cpus_per_actor=1.5"], r"4 nodes of 0 \+ 1 \+ 1 \+ 1 CPUs"),
    (GPU_NODES, ["Global.device=gpu:0,1,2,3,4,5,6,7,8"], r"at most 8 fit"),
    (TWO_CPUS, ["Ray.gpus_per_actor=1"], "Global.device is cpu but Ray.gpus_per_actor is 1"),
    (TWO_CPUS, ["Global.device=gpu", "Ray.gpus_per_actor=0"], "Global.device is gpu but Ray.gpus_per_actor is 0"),
    (TWO_CPUS, ["Global.device=tpu"], "device 'tpu' is not one of cpu, gpu"),
])
def test_what_cannot_fit_is_refused_with_the_largest_that_would(cluster, overrides, match):
    with pytest.raises(ValueError, match=match):
        predict_actors(load_config(None, overrides), cluster)


@pytest.mark.parametrize("cluster,overrides,expected", [
    (TWO_CPUS, [], (1, 1.0, 0.0, 2, "cpu")),  # one worker per node, one CPU kept for its data pipeline
    (TWO_CPUS, ["Ray.num_workers=2"], (2, 0.5, 0.0, 1, "cpu")),  # the case: fits, one thread each
    (THREE_SMALL_NODES, [], (2, 1.0, 0.0, 1, "cpu")),  # a worker on two nodes, the third feeds them
    (THREE_SMALL_NODES, ["Ray.num_workers=2"], (2, 1.0, 0.0, 1, "cpu")),
    (GPU_NODES, ["Global.device=gpu"], (8, 1.0, 1.0, 4, "gpu")),
    (GPU_NODES, ["Global.device=gpu:0,1", "Ray.cpus_per_worker=4"], (2, 4.0, 1.0, 16, "gpu")),
])
def test_train_workers_are_sized_to_the_cluster(cluster, overrides, expected):
    w = train_workers(load_config(None, overrides), cluster)
    assert (w.count, w.cpus, w.gpus, w.threads, w.device) == expected


def test_train_workers_refusals():
    assert train_workers(load_config(None, ["Ray.num_workers=0"]), None).count == 0  # in this process: no cluster needed
    with pytest.raises(ValueError, match="Global.device is cpu but Ray.use_gpu is true"):
        train_workers(load_config(None, ["Ray.use_gpu=true"]), TWO_CPUS)
    with pytest.raises(ValueError, match=r"Ray.num_workers=2 .* 1 CPU left for reading and decoding; at most 1 fit"):
        train_workers(load_config(None, ["Ray.num_workers=2", "Ray.cpus_per_worker=1"]), TWO_CPUS)
    with pytest.raises(ValueError, match=r"at most 4 fit"):  # 0.25 CPU each at least, one CPU kept
        train_workers(load_config(None, ["Ray.num_workers=9"]), TWO_CPUS)


def test_serve_replicas_use_the_same_rules():
    opts = lambda **kw: parse_options(ServeOptions, {"model_dir": "m", **kw}, "args")  # noqa: E731
    r = serve_replicas(opts(), TWO_CPUS)
    assert (r.count, r.cpus, r.gpus, r.threads, r.device) == (2, 1.0, 0.0, 1, "cpu")
    r = serve_replicas(opts(num_replicas=2, cpus_per_replica=2, gpus_per_replica=0.5), GPU_NODES)
    assert (r.count, r.cpus, r.gpus, r.threads, r.device) == (2, 2.0, 0.5, 16, "gpu")  # device None: gpu when it has one; spread over both nodes
    r = serve_replicas(opts(autoscaling={"min_replicas": 1, "max_replicas": 50}), TWO_CPUS)  # Serve adds replicas later: unchecked
    assert (r.cpus, r.threads) == (1.0, 1)
    with pytest.raises(ValueError, match="device is cpu but gpus_per_replica is 0.5"):
        serve_replicas(opts(device="cpu", gpus_per_replica=0.5), GPU_NODES)
    with pytest.raises(ValueError, match="num_replicas=3 .* at most 2 fit"):
        serve_replicas(opts(num_replicas=3, cpus_per_replica=1), TWO_CPUS)


@pytest.mark.parametrize("cluster, overrides, trials, cap, expected", [
    # in-process trials: one CPU each by default, as many at once as there are CPUs
    (Cluster(((2.0, 0.0),)), ["Ray.num_workers=0"], 3, None, (0, 1.0, 1, {"cpu": 1.0, "gpu": 0.0}, 2)),
    (Cluster(((2.0, 0.0),)), ["Ray.num_workers=0"], 3, 1, (0, 1.0, 1, {"cpu": 1.0, "gpu": 0.0}, 1)),
    # Ray Train trials: a worker and a CPU for the data pipeline each; the trial process reserves no CPU
    (Cluster(((2.0, 0.0),)), [], 3, None, (1, 1.0, 1, {"cpu": 0, "memory": 1 << 20}, 1)),
    (Cluster(((4.0, 0.0), (4.0, 0.0))), [], 8, None, (1, 1.0, 1, {"cpu": 0, "memory": 1 << 20}, 4)),
    (Cluster(((4.0, 0.0), (4.0, 0.0))), ["Ray.num_workers=2", "Ray.cpus_per_worker=1.5"], 8, None, (2, 1.5, 1, {"cpu": 0, "memory": 1 << 20}, 2)),
    (Cluster(((8.0, 4.0),)), ["Global.device=gpu:0,1"], 4, None, (2, 1.0, 1, {"cpu": 0, "memory": 1 << 20}, 2)),
])
def test_tune_trials_run_as_many_at_once_as_fit(cluster, overrides, trials, cap, expected):
    placement, resources, concurrent = tune_trials(load_config(None, overrides), cluster, trials, cap)
    assert (placement.count, placement.cpus, placement.threads, resources, concurrent) == expected


def test_a_tune_trial_that_cannot_fit_is_refused():
    with pytest.raises(ValueError, match=r"one trial \(1 x 3 CPUs \(Ray.cpus_per_worker\), plus 1 CPU for its data pipeline\) does not fit"):
        tune_trials(load_config(None, ["Ray.cpus_per_worker=3"]), Cluster(((2.0, 0.0),)), 2)


def test_parse_device():
    assert parse_device("GPU:0,1") == ("gpu", 2) and parse_device("cpu") == ("cpu", None)


def test_light_modules_do_not_import_paddle():
    """Config checks, input listing, Ray Data's read steps and the Serve proxy import these; Paddle
    (1.3 s) loads only where a model runs."""
    code = ("import sys, raysegment, raysegment.config, raysegment.batch, raysegment.bulk_output, raysegment.serve, "
            "raysegment.data.check, raysegment.infer.result; print('paddle' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_two_thread_settings_for_one_process_are_refused():
    with pytest.raises(ConfigError, match="Ray.threads_per_actor and Predict.engine_config.cpu_threads both set"):
        load_config(None, ["Ray.threads_per_actor=1", "Predict.engine_config.cpu_threads=2"])
    with pytest.raises(ConfigError, match="args.threads_per_replica and args.engine_config.cpu_threads both set"):
        parse_options(ServeOptions, {"threads_per_replica": 1, "use_hpip": True, "hpi_config": {"backend_config": {"cpu_threads": 2}}}, "args")
    opts = parse_options(ServeOptions, {"engine_config": {"cpu_threads": 2}}, "args")
    assert serve_replicas(opts, TWO_CPUS).threads == 2
