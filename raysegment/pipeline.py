"""PaddleX's pipeline API: one YAML names the model and its settings; predict as create_model does.

    pipeline = raysegment.create_pipeline(pipeline="semantic_segmentation")   # PaddleX's default file
    pipeline = raysegment.create_pipeline(pipeline="configs/semantic_segmentation.yaml")
    for res in pipeline.predict("images/"):
        res.print()
        res.save_to_img("output/")

The YAML is PaddleX's (config.PipelineConfig is its schema), so a PaddleX user's pipeline file works
unchanged. Engine keys are taken from the module first, then create_pipeline's arguments, then
the file's top level.
"""

import os

import yaml

from .config import ConfigError, PipelineConfig, parse_options
from .infer.options import EngineKeys

PIPELINE_NAMES = ("semantic_segmentation",)
PADDLEX_MODULE_KEYS = ("module_name", "model_name", "model_dir", "batch_size", "target_size")  # what PaddleX's file holds


def default_pipeline_yaml(name="semantic_segmentation"):
    """The text of PaddleX's pipeline file for `name`, as `--get_pipeline_config` writes it."""
    _check_name(name)
    module = PipelineConfig().SubModules.SemanticSegmentation
    return yaml.safe_dump({"pipeline_name": name, "SubModules": {
        "SemanticSegmentation": {k: getattr(module, k) for k in PADDLEX_MODULE_KEYS}}}, sort_keys=False)


def _check_name(name):
    if name not in PIPELINE_NAMES:
        raise ConfigError(f"unknown pipeline {name!r}; available: {', '.join(PIPELINE_NAMES)}")


def load_pipeline_config(pipeline=None, config=None):
    """PipelineConfig from a pipeline name, a pipeline YAML path, or a dict `config` as PaddleX's
    create_pipeline takes it."""
    if config is None:
        if pipeline in PIPELINE_NAMES:
            return PipelineConfig()
        path = os.fspath(pipeline) if pipeline is not None else None
        if not path or not os.path.isfile(path):
            raise ConfigError(f"pipeline {pipeline!r} is neither a pipeline name ({', '.join(PIPELINE_NAMES)}) nor a "
                              "pipeline YAML file; `raysegment --get_pipeline_config semantic_segmentation` writes one")
        try:
            with open(path, encoding="utf-8") as f:
                config = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"pipeline file {path!r} is not valid YAML: {e}") from None
        if not isinstance(config, dict):
            raise ConfigError(f"pipeline file {path!r} must hold a mapping, got {type(config).__name__}")
    modules = config.get("SubModules")
    module = modules.get("SemanticSegmentation") if isinstance(modules, dict) else None
    if isinstance(module, dict) and module.get("target_size") == "None":
        # PaddleX's own file writes `target_size: None`, which YAML reads as the string "None";
        # PaddleX takes it as no target size, and so do we
        config = {**config, "SubModules": {**config["SubModules"], "SemanticSegmentation": {**module, "target_size": None}}}
    return parse_options(PipelineConfig, config, "pipeline")


def module_options(config, engine=None, engine_config=None, use_hpip=None, hpi_config=None):
    """The module's InferenceOptions, each unset engine key taken from create_pipeline's arguments
    (checked here by name), then from the file's top level."""
    given = parse_options(EngineKeys, {"engine": engine, "engine_config": engine_config, "use_hpip": use_hpip,
                                       "hpi_config": hpi_config}, "create_pipeline")
    return config.SubModules.SemanticSegmentation.over(given, config)


class SemanticSegmentationPipeline:
    def __init__(self, config, device=None, engine=None, engine_config=None, use_hpip=None, hpi_config=None):
        from .infer.model import SegModel

        self.config = config
        options = module_options(config, engine, engine_config, use_hpip, hpi_config)
        self.batch_size = options.batch_size
        self.model = SegModel.create(options.model_name, options.model_dir, device or config.device, options)

    def predict(self, input, target_size=None, **kwargs):
        """Yield a SegResult per image (per PDF page), as create_model(...).predict does, in the
        pipeline's batch_size."""
        if kwargs:
            raise TypeError(f"predict() got unexpected keyword(s) {', '.join(sorted(kwargs))}; it takes input and target_size")
        yield from self.model.predict(input, batch_size=self.batch_size, target_size=target_size)

    __call__ = predict


def create_pipeline(pipeline=None, config=None, device=None, engine=None, engine_config=None, use_hpip=None,
                    hpi_config=None):
    """PaddleX's create_pipeline: `pipeline` is "semantic_segmentation" or a pipeline YAML path;
    `config` a dict of the same (instead of `pipeline`)."""
    if pipeline is None and config is None:
        raise ValueError("pass pipeline= (a pipeline name or YAML file) or config=")
    return SemanticSegmentationPipeline(load_pipeline_config(pipeline, config), device, engine, engine_config, use_hpip, hpi_config)
