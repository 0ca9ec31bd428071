"""The cluster configs: the launcher YAML against Ray's own schema, the KubeRay manifest by shape,
and every entrypoint they name against our config loader."""

import json
import os
import shlex

import jsonschema
import ray
import yaml

from raysegment.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "cluster")


def load(name):
    with open(os.path.join(CLUSTER, name)) as f:
        return yaml.safe_load(f)


def check_entrypoint(command):
    """`python .../jobs/X.py -c CONFIG -o ...`: the job exists and the config with its overrides loads."""
    words = shlex.split(command)
    job = words[1]
    assert os.path.isfile(os.path.join(ROOT, "jobs", os.path.basename(job))), job
    config = os.path.join(ROOT, "configs", os.path.basename(words[words.index("-c") + 1]))
    overrides = [words[i + 1] for i, w in enumerate(words) if w == "-o"]
    return load_config(config, overrides)


def test_launcher_config_matches_rays_schema():
    with open(os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")) as f:
        schema = json.load(f)
    config = load("aws-gpu.yaml")
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    assert config["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1


def test_kuberay_job_shape_and_entrypoint():
    job = load("kuberay-train-job.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    (group,) = cluster["workerGroupSpecs"]
    assert {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(group)
    gpus = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    cfg = check_entrypoint(spec["entrypoint"])
    assert cfg.Global.device == "gpu" and cfg.Ray.num_workers == group["replicas"] * gpus


def check_serve_config(config):
    """A Serve config Ray's own schema accepts, whose app args our ServeOptions accept."""
    from ray.serve.schema import ServeDeploySchema

    from raysegment.config import ServeOptions, parse_options

    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == "raysegment.serve:build_app"
    return parse_options(ServeOptions, app["args"], "args")


def test_serve_config_is_valid_and_binds_localhost():
    with open(os.path.join(ROOT, "configs", "serve.yaml")) as f:
        config = yaml.safe_load(f)
    opts = check_serve_config(config)
    assert config["http_options"]["host"] == "127.0.0.1"  # Serve config files default to 0.0.0.0
    assert os.path.isdir(os.path.join(ROOT, opts.model_dir)) and not opts.allow_url_inputs


def test_kuberay_rayservice_shape_and_serve_config():
    service = load("kuberay-rayservice.yaml")
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    opts = check_serve_config(yaml.safe_load(service["spec"]["serveConfigV2"]))
    (group,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    gpus = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert opts.gpus_per_replica == gpus and opts.autoscaling["max_replicas"] <= group["maxReplicas"] * gpus
    assert opts.max_ongoing_requests >= opts.max_batch_size
