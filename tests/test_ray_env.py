"""Resource sizing from config sections (raysegment/ray_env.py), and the light package import."""

import subprocess
import sys

import pytest

from raysegment.config import ServeOptions, load_config, parse_options
from raysegment.ray_env import parse_device, place, predict_actors, serve_replicas, train_workers


@pytest.mark.parametrize("overrides,expected", [
    ([], (1, 1.0, 0.0, 1, "cpu")),
    (["Ray.predict_concurrency=3", "Ray.cpus_per_actor=2"], (3, 2.0, 0.0, 2, "cpu")),  # threads follow the CPUs
    (["Ray.cpus_per_actor=0.5", "Ray.threads_per_actor=4"], (1, 0.5, 0.0, 4, "cpu")),  # an explicit value wins
    (["Global.device=gpu"], (1, 1.0, 1.0, 1, "gpu")),
    (["Global.device=gpu:0,1,2,3", "Ray.gpus_per_actor=0.5"], (4, 1.0, 0.5, 1, "gpu")),  # a GPU list is the actor count
    (["Global.device=gpu:3"], (1, 1.0, 1.0, 1, "gpu")),  # on Ray, which GPU is Ray's choice
])
def test_predict_actors_follow_global_device_and_the_ray_section(overrides, expected):
    p = predict_actors(load_config(None, overrides))
    assert (p.count, p.cpus, p.gpus, p.threads, p.device) == expected
    assert p.ray_options == {"num_cpus": expected[1], "num_gpus": expected[2]}


@pytest.mark.parametrize("overrides,match", [
    (["Ray.gpus_per_actor=1"], "Global.device is cpu but Ray.gpus_per_actor is 1"),
    (["Global.device=gpu", "Ray.gpus_per_actor=0"], "Global.device is gpu but Ray.gpus_per_actor is 0"),
    (["Global.device=tpu"], "device 'tpu' is not one of cpu, gpu"),
])
def test_contradictions_are_refused_by_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        predict_actors(load_config(None, overrides))


def test_serve_replicas_and_train_workers_use_the_same_rules():
    opts = parse_options(ServeOptions, {"model_dir": "m", "num_replicas": 2, "cpus_per_replica": 2, "gpus_per_replica": 0.5}, "args")
    r = serve_replicas(opts)
    assert (r.count, r.cpus, r.gpus, r.threads, r.device) == (2, 2.0, 0.5, 2, "gpu")  # device None: gpu when it has one
    with pytest.raises(ValueError, match="device is cpu but gpus_per_replica is 0.5"):
        serve_replicas(parse_options(ServeOptions, {"device": "cpu", "gpus_per_replica": 0.5}, "args"))
    w = train_workers(load_config(None, ["Global.device=gpu:0,1", "Ray.cpus_per_worker=4"]))
    assert (w.count, w.cpus, w.gpus, w.threads, w.device) == (2, 4.0, 1.0, 4, "gpu")
    assert train_workers(load_config(None, ["Ray.num_workers=0"])).count == 0
    with pytest.raises(ValueError, match="Global.device is cpu but Ray.use_gpu is true"):
        train_workers(load_config(None, ["Ray.use_gpu=true"]))


def test_place_defaults():
    assert place(2, 1.5).threads == 1 and place(2, 1.5).device == "cpu"
    assert parse_device("GPU:0,1") == ("gpu", 2) and parse_device("cpu") == ("cpu", None)


def test_light_modules_do_not_import_paddle():
    """Config checks, input listing, Ray Data's read steps and the Serve proxy import these; Paddle
    (1.3 s) loads only where a model runs."""
    code = ("import sys, raysegment, raysegment.config, raysegment.batch, raysegment.bulk_output, raysegment.serve, "
            "raysegment.data.check, raysegment.infer.result; print('paddle' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
