"""Model configs: PaddleX's YAML section layout plus a `Ray` section, with `-o Section.key=value` overrides.

    cfg = load_config("configs/PP-LiteSeg-T.yaml", ["Train.num_classes=11", "Global.device=cpu"])
    cfg.Train.num_classes  # 11

One dataclass per section. Every key is typed: a YAML value or an override that does not fit its
type, an unknown section or key, or a value outside its allowed range is a ConfigError naming it.
Override values are parsed as YAML (so `true`, `3`, `[512, 512]`, `null` work); a float field also
takes `1e-3`, which YAML 1.1 would read as a string. Nothing is rewritten silently.
"""

import copy
import dataclasses
import difflib
import types
from dataclasses import dataclass, field
from typing import Union, get_args, get_origin, get_type_hints

import yaml

from .infer.engines.spec import with_shorthands
from .infer.options import EngineKeys, InferenceOptions, at_least as _min, choice as _choice
from .models import MODELS


MEDIAN_FREQUENCY = "median_frequency"  # Train.class_weights computed from the train labels


class ConfigError(ValueError):
    pass


@dataclass
class GlobalSection:
    model: str = ""
    mode: str = field(default="predict", metadata=_choice("check_dataset", "train", "evaluate", "predict", "export"))
    dataset_dir: str | None = None
    # cpu, gpu, gpu:N or gpu:0,1,2,3: where training workers and the predict/evaluate actors compute;
    # a list of N GPUs means N workers (or N actors). On Ray, which GPU a process gets is Ray's choice.
    device: str = "cpu"
    output: str = "output"


@dataclass
class ConvertSection:
    enable: bool = False
    src_dataset_type: str | None = field(default=None, metadata=_choice(None, "LabelMe", "VOC"))


@dataclass
class SplitSection:
    enable: bool = False
    train_percent: int | None = field(default=None, metadata=_min(0))
    val_percent: int | None = field(default=None, metadata=_min(0))
    seed: int = 0  # ours: the same seed gives the same split


@dataclass
class CheckDatasetSection:
    convert: ConvertSection = field(default_factory=ConvertSection)
    split: SplitSection = field(default_factory=SplitSection)


@dataclass
class TrainSection:
    num_classes: int | None = field(default=None, metadata=_min(1))
    epochs_iters: int = field(default=1000, metadata=_min(1))
    batch_size: int = field(default=4, metadata=_min(1))  # per worker
    learning_rate: float = field(default=0.01, metadata=_min(0.0))
    pretrain_weight_path: str | None = None  # .pdparams file or URL, checkpoint folder, or exported inference folder
    warmup_steps: int = field(default=0, metadata=_min(0))
    resume_path: str | None = None
    log_interval: int = field(default=10, metadata=_min(1))
    eval_interval: int = field(default=100, metadata=_min(1))
    # ours: the published recipe's knobs (PaddleSeg's values for PP-LiteSeg are the defaults)
    crop_size: list[int] = field(default_factory=lambda: [512, 512])  # [width, height]
    min_scale: float = field(default=0.5, metadata=_min(0.01))
    max_scale: float = field(default=2.0, metadata=_min(0.01))
    scale_step: float = field(default=0.25, metadata=_min(0.0))
    flip: bool = True
    distort: float = field(default=0.5, metadata=_min(0.0))  # brightness/contrast/saturation range; 0: off
    loss: str = field(default="ohem", metadata=_choice("ohem", "ce"))  # per-pixel loss (MaskFormer uses its own set loss)
    ohem_min_kept: int = field(default=130000, metadata=_min(0))
    loss_coefs: list[float] | None = None  # one per head's logits; null: the model's published coefficients
    # > 0: the main head's loss adds this much Lovász-softmax, a surrogate of 1 - IoU that lifts thin
    # classes (PaddleSeg's MixedLoss; its recipes mix 0.8 CE with 0.2 Lovász, i.e. 0.25 here)
    lovasz_weight: float = field(default=0.0, metadata=_min(0.0))
    # one loss weight per class, or "median_frequency": computed from the train labels when training
    # starts (rare classes weigh more; the values are logged and kept in the output's config.yaml); null: 1 each
    class_weights: list[float] | str | None = None
    # [width, height]: val images are resized to fit it (keeping their aspect ratio) for the evaluations
    # during training, and the saved checkpoints and best_model's inference folder carry it as their
    # Resize transform, so predicting with them resizes the same way (PaddleSeg's val/Deploy Resize).
    # null: images as they are
    eval_target_size: list[int] | None = None
    optimizer: str = field(default="sgd", metadata=_choice("sgd", "adamw"))  # sgd: momentum SGD
    momentum: float = field(default=0.9, metadata=_min(0.0))  # sgd only
    weight_decay: float = field(default=5e-4, metadata=_min(0.0))
    grad_clip_norm: float | None = field(default=None, metadata=_min(0.0))  # each parameter's gradient L2 norm at most this
    lr_power: float = field(default=0.9, metadata=_min(0.0))  # polynomial decay to 0
    amp: bool = False  # mixed precision, GPU only
    freeze_bn: bool = False  # BatchNorm uses its running statistics (fine-tuning on small batches)
    seed: int = 0
    keep_checkpoints: int = field(default=2, metadata=_min(1))  # iter_N folders kept besides best_model


@dataclass
class EvaluateSection:
    weight_path: str | None = None
    log_interval: int = field(default=10, metadata=_min(1))  # a progress line every N actor batches


@dataclass
class ExportSection:
    weight_path: str | None = None


@dataclass
class PredictSection(InferenceOptions):
    """The bulk job's settings (and evaluation's engine keys); the inference keys are InferenceOptions'."""

    model_dir: str | None = None
    input: str | list[str] | None = None  # folders, globs, files, URL lists (.txt), s3:// prefixes, URLs
    output: str = "output/predict"  # local folder or s3:// prefix
    # images per forward pass (bulk job and evaluation); at most Ray.predict_batch_size, the images
    # an actor gets at a time
    batch_size: int = field(default=1, metadata=_min(1))
    save_visualization: bool = False
    # a rerun skips every input the output already records; true runs those recorded as errors again
    retry_errors: bool = False
    max_image_bytes: int = field(default=100_000_000, metadata=_min(1))


@dataclass
class RaySection:
    """Ray resources; the only place (with jobs/) where resource numbers live."""

    address: str | None = None  # None: connect to RAY_ADDRESS or start a local Ray
    # null: chosen from the cluster's nodes when the job starts (ray_env.py); a value set wins, and
    # one that cannot fit the cluster is refused with the largest that would
    num_workers: int | None = field(default=None, metadata=_min(0))  # training workers; 0: in this process, no Ray; null: one per node (CPU), one per GPU
    use_gpu: bool = False
    cpus_per_worker: float | None = field(default=None, metadata=_min(0.0))  # null: the node's CPUs shared out, 0.5 kept for data tasks
    predict_batch_size: int = field(default=8, metadata=_min(1))  # images per actor call
    predict_concurrency: int | None = field(default=None, metadata=_min(1))  # predictor actors; null: one per CPU (one per GPU on gpu)
    gpus_per_actor: float | None = field(default=None, metadata=_min(0.0))  # null: 1 when Global.device is gpu, else 0
    cpus_per_actor: float | None = field(default=None, metadata=_min(0.0))  # null: the cluster's CPUs shared out
    # Paddle threads per actor; null: the CPUs of its node over the actors placed there. Ray reserves
    # CPUs for scheduling only, so an actor may compute with more threads than it reserves
    threads_per_actor: int | None = field(default=None, metadata=_min(1))
    max_failures: int = field(default=2, metadata=_min(0))  # training restarts from the last checkpoint
    storage_path: str | None = None  # Ray Train checkpoints (local, shared or s3://); None: Global.output/ray_results


@dataclass
class ServeOptions(InferenceOptions):
    """The Ray Serve app (raysegment/serve/): `args` of configs/serve.yaml, or jobs/serve.py's
    `-o key=value`; the inference keys are InferenceOptions'. Not a model-config section: a PaddleX
    model YAML has no serving part."""

    model_dir: str | None = None  # exported inference folder or checkpoint
    # where jobs/serve.py and `raysegment --serve` listen (a Serve config file: http_options). This
    # machine only unless set: PaddleX's `--serve` listens on 0.0.0.0:8080
    host: str = "127.0.0.1"
    port: int = field(default=8000, metadata=_min(1))
    device: str | None = None  # None: gpu when the replica has one, else cpu
    # dynamic batching: a forward pass takes up to max_batch_size waiting requests; 1 turns it off
    max_batch_size: int = field(default=4, metadata=_min(1))
    batch_wait_timeout_s: float = field(default=0.01, metadata=_min(0.0))
    # requests a replica holds at once (queued + in a batch); at least max_batch_size
    max_ongoing_requests: int = field(default=12, metadata=_min(1))
    # overload: past this many requests waiting at the proxy for a replica, a request is answered 503
    # at once, with Retry-After: retry_after_s (Serve's max_queued_requests); -1 queues without bound.
    # The defaults keep the 200s' p99 under 256 clients within 2x that of 32 clients, which get no 503
    # (docs/serving.md#backpressure)
    max_queued_requests: int = field(default=24, metadata=_min(-1))
    retry_after_s: float = field(default=2.0, metadata=_min(0.0))
    num_replicas: int | None = field(default=None, metadata=_min(1))  # null: one per CPU (one per GPU on gpu)
    # Serve's autoscaling_config (min_replicas, max_replicas, target_ongoing_requests, ...);
    # replaces num_replicas when set
    autoscaling: dict | None = None
    cpus_per_replica: float | None = field(default=None, metadata=_min(0.0))  # null: the cluster's CPUs shared out (1 with autoscaling)
    gpus_per_replica: float | None = field(default=None, metadata=_min(0.0))  # null: 1 when device is gpu, else 0
    threads_per_replica: int | None = field(default=None, metadata=_min(1))  # null: its node's CPUs over the replicas there
    # many models (Serve's model multiplexing): model id -> model folder, loaded on demand by each
    # replica, at most max_models_per_replica at once (least recently used dropped first); requests
    # pick one by the serve_multiplexed_model_id header, a "model" field or /models/<id>/...
    models: dict | None = None
    max_models_per_replica: int = field(default=3, metadata=_min(1))
    visualize: bool = False  # whether answers carry the overlay when a request does not say
    ui: bool = True  # the web page at /ui (and / redirecting to it); false: neither route answers
    max_body_bytes: int = field(default=20_000_000, metadata=_min(1))
    request_timeout_s: float = field(default=60.0, metadata=_min(0.0))  # jobs/serve.py; Serve's http_options
    # URL inputs: off unless enabled, and then only http(s) to these host names (or host:port)
    allow_url_inputs: bool = False
    url_allowlist: list[str] = field(default_factory=list)

    def check(self, where):
        super().check(where)
        _one_thread_setting((f"{where}.threads_per_replica", self.threads_per_replica),
                            (f"{where}.engine_config.cpu_threads", self.cpu_threads))
        if self.max_queued_requests == 0:
            raise ValueError(f"{where}.max_queued_requests is 0; Serve takes -1 (no limit) or at least 1")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(f"{where}.max_ongoing_requests ({self.max_ongoing_requests}) is below {where}.max_batch_size "
                             f"({self.max_batch_size}): batches could never fill; raise it")


@dataclass
class SegModuleSection(InferenceOptions):
    """A pipeline's SubModules.SemanticSegmentation: PaddleX's keys, and the inference keys
    (InferenceOptions'; an unset engine key is the pipeline's: create_pipeline's argument, then the
    file's top level)."""

    module_name: str = field(default="semantic_segmentation", metadata=_choice("semantic_segmentation"))
    model_name: str = "PP-LiteSeg-T"
    model_dir: str | None = None  # null: PaddleX's official folder of model_name, downloaded into its cache
    batch_size: int = field(default=1, metadata=_min(1))  # images per forward pass


@dataclass
class SubModulesSection:
    SemanticSegmentation: SegModuleSection = field(default_factory=SegModuleSection)


@dataclass
class PipelineConfig(EngineKeys):
    """PaddleX's pipeline YAML (paddlex/configs/pipelines/semantic_segmentation.yaml) as a schema:
    its defaults are PaddleX's file; an unknown key is refused by name. The top-level engine keys
    apply where the module and create_pipeline leave them unset."""

    pipeline_name: str = field(default="semantic_segmentation", metadata=_choice("semantic_segmentation"))
    SubModules: SubModulesSection = field(default_factory=SubModulesSection)
    device: str | None = None


def _one_thread_setting(*settings):
    """A ValueError when more than one of these (key, value) threads settings is set."""
    given = [key for key, value in settings if value is not None]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} both set the threads of each process; set one")


def parse_options(cls, raw, where, overrides=()):
    """A dict (e.g. a Serve config's `args`) plus `key=value` overrides -> dataclass `cls`, checked
    as config sections are (and by its own `check(where)`, where it has one)."""
    raw = dict(raw or {})
    for item in overrides:
        _apply_override(raw, item, cls, where)
    options = _build(cls, raw, where)
    _checked(options.check, where) if hasattr(options, "check") else None
    return options


def inference_options(where="create_model", run_mode=None, cpu_threads=None, **keys):
    """create_model's keywords -> InferenceOptions, checked as a config section is (an unknown
    keyword is refused by name); run_mode= and cpu_threads= are shorthands for engine_config's."""
    try:
        keys["engine_config"] = with_shorthands(_plain(keys.get("engine_config")), run_mode=run_mode, cpu_threads=cpu_threads) or None
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    return parse_options(InferenceOptions, keys, where)


def _plain(section):
    return dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section


def _checked(check, *args):
    try:
        check(*args)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


@dataclass
class Config:
    Global: GlobalSection = field(default_factory=GlobalSection)
    CheckDataset: CheckDatasetSection = field(default_factory=CheckDatasetSection)
    Train: TrainSection = field(default_factory=TrainSection)
    Evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    Export: ExportSection = field(default_factory=ExportSection)
    Predict: PredictSection = field(default_factory=PredictSection)
    Ray: RaySection = field(default_factory=RaySection)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_yaml(self):
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_config(path=None, overrides=(), where=None):
    """Read a YAML config (or start from defaults when `path` is None) and apply `overrides`."""
    raw = {}
    if path is not None:
        where = where or str(path)
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist; pass -c with a file from configs/") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(raw).__name__}")
    return config_from_dict(raw, overrides)


def config_from_dict(raw, overrides=()):
    """A Config from a dict of sections (e.g. `cfg.to_dict()`) and `Section.key=value` overrides."""
    raw = copy.deepcopy(raw)  # overrides must not change the caller's dict
    for item in overrides:
        _apply_override(raw, item)
    cfg = _build(Config, raw, "config")
    _check_model(cfg)
    return cfg


def _check_model(cfg):
    if cfg.Global.model and cfg.Global.model not in MODELS:
        raise ConfigError(f"Global.model: unknown model {cfg.Global.model!r}; valid names: {', '.join(MODELS)}")
    crop = cfg.Train.crop_size
    if len(crop) != 2 or min(crop) < 1:
        raise ConfigError(f"Train.crop_size: expected [width, height] of positive ints, got {crop!r}")
    size = cfg.Train.eval_target_size
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ConfigError(f"Train.eval_target_size: expected null or [width, height] of positive ints, got {size!r}")
    weights = cfg.Train.class_weights
    if isinstance(weights, str) and weights != MEDIAN_FREQUENCY or isinstance(weights, list) and min(weights, default=0) < 0:
        raise ConfigError(f"Train.class_weights: expected null, {MEDIAN_FREQUENCY!r} or one non-negative weight per class, got {weights!r}")
    if cfg.Train.min_scale > cfg.Train.max_scale:
        raise ConfigError(f"Train.min_scale ({cfg.Train.min_scale}) is above Train.max_scale ({cfg.Train.max_scale})")
    _checked(cfg.Predict.check, "Predict")
    _checked(_one_thread_setting, ("Ray.threads_per_actor", cfg.Ray.threads_per_actor),
             ("Predict.engine_config.cpu_threads", cfg.Predict.cpu_threads))


def _apply_override(raw, item, root=Config, where="config"):
    """'Section.key=value' (or 'Section.sub.key=value'; 'key=value' below another root) ->
    raw[Section][key] = parsed value."""
    name, sep, text = item.partition("=")
    form = "Section.key=value" if root is Config else "key=value"
    if not sep or not name.strip():
        raise ConfigError(f"override {item!r} is not of the form {form}")
    parts = name.strip().split(".")
    if root is Config and len(parts) < 2:
        raise ConfigError(f"override {item!r} must name a section and a key, e.g. Train.batch_size=8")
    typ, node = root, raw
    for depth, part in enumerate(parts):
        hints = get_type_hints(typ)
        if part not in hints:
            raise ConfigError(_unknown(".".join(parts[:depth]) or where, part, hints))
        typ = _section_type(hints[part])
        if depth < len(parts) - 1:
            if not dataclasses.is_dataclass(typ):
                raise ConfigError(f"{'.'.join(parts[: depth + 1])} is a value, not a section; cannot set {name}")
            if node.get(part) is None:  # absent, or `null` in the YAML
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(parts[: depth + 1])} must be a mapping")
    if dataclasses.is_dataclass(typ):
        raise ConfigError(f"{name} is a section; set one of its keys, e.g. {name}.{next(iter(get_type_hints(typ)))}=...")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    try:
        _coerce(value, typ, name)
    except ConfigError:
        if str not in _members(typ):
            raise
        value = text  # a string field keeps the text as written, e.g. Global.output=2024
    node[parts[-1]] = value


def _section_type(typ):
    """A `Section | None` field is a section for overrides (e.g. Predict.engine_config.cpu_threads=2)."""
    sections = [t for t in _members(typ) if dataclasses.is_dataclass(t)]
    return sections[0] if len(sections) == 1 and len(_members(typ)) == 2 and type(None) in _members(typ) else typ


def _unknown(where, key, hints):
    close = difflib.get_close_matches(str(key), list(hints), n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    if where == "config":
        return f"unknown section {key!r}; {guess}valid sections: {', '.join(hints)}"
    return f"{where}: unknown key {key!r}; {guess}valid keys: {', '.join(hints)}"


def _members(typ):
    return get_args(typ) if get_origin(typ) in (Union, types.UnionType) else (typ,)


def _typename(typ):
    return " or ".join("null" if t is type(None) else getattr(t, "__name__", str(t)) for t in _members(typ))


def _build(cls, raw, where):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {raw!r}")
    hints = get_type_hints(cls)
    for key in raw:
        if key not in hints:
            raise ConfigError(_unknown(where, key, hints))
    values = {}
    for f in dataclasses.fields(cls):
        name = f.name if where == "config" else f"{where}.{f.name}"
        if f.name not in raw:
            continue
        value = _coerce(raw[f.name], hints[f.name], name)
        _check_range(value, f.metadata, name)
        values[f.name] = value
    return cls(**values)


def _check_range(value, meta, name):
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join("null" if c is None else str(c) for c in meta["choices"])
        raise ConfigError(f"{name}: {value!r} is not one of {allowed}")
    if "min" in meta and value is not None and value < meta["min"]:
        raise ConfigError(f"{name}: {value!r} is below the minimum {meta['min']}")


def _coerce(value, typ, name):
    if dataclasses.is_dataclass(typ):
        return _build(typ, value, name)
    members = _members(typ)
    if len(members) > 1:
        if value is None and type(None) in members:
            return None
        given = [m for m in members if m is not type(None)]
        if len(given) == 1:  # `X | None` and a value: X's own error names what is wrong
            return _coerce(value, given[0], name)
        for member in members:
            if member is type(None):
                continue
            try:
                return _coerce(value, member, name)
            except ConfigError:
                pass
        raise ConfigError(f"{name}: expected {_typename(typ)}, got {value!r}")
    if get_origin(typ) is list:
        (item,) = get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
    if typ is bool and isinstance(value, bool):
        return value
    if typ is dict and isinstance(value, dict):
        return value
    if typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if typ is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    if typ is str and isinstance(value, str):
        return value
    raise ConfigError(f"{name}: expected {_typename(typ)}, got {value!r}")

