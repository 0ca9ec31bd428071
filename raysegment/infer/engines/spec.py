"""What a user asks of the engine, in PaddleX's words, checked without importing any engine.

    create_model(..., engine=None | "paddle" | "paddle_static" | "onnxruntime" | "openvino" | "hpi",
                 engine_config={"run_mode": ..., "cpu_threads": ..., "precision": ..., "calibration_images": ...},
                 use_hpip=..., hpi_config={"backend": ..., "backend_config": {...}, "auto_config": ...})

The same keys sit in a config file's Predict section and in the Serve app's options. Left unset, the
engine is picked per model and input shape (choice.py), which is what PaddleX's
high-performance mode (use_hpip) does, so use_hpip only allows hpi_config. calibration_images is
ours, not PaddleX's: the images precision int8 is calibrated on (quantize.py).
"""

import os
from dataclasses import dataclass

ENGINES = ("paddle", "onnxruntime", "openvino")
PADDLEX_ENGINE_NAMES = {"paddle": "paddle", "paddle_static": "paddle", "onnxruntime": "onnxruntime",
                        "openvino": "openvino", "hpi": None}
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# paddle.inference CPU modes; unpinned, oneDNN runs once it gives plain Paddle's masks (choice.py).
CPU_RUN_MODES = ("mkldnn", "paddle")
PINNED_RUN_MODES = (*CPU_RUN_MODES, "mkldnn_bf16")  # bf16 on oneDNN: opt-in only
ENGINE_CONFIG_KEYS = ("run_mode", "cpu_threads", "precision", "calibration_images")
HPI_CONFIG_KEYS = ("backend", "backend_config", "auto_config")


@dataclass(frozen=True)
class EngineSpec:
    engine: str | None = None  # None: the fastest installed engine whose masks equal Paddle's
    run_mode: str | None = None  # a Paddle CPU mode (PINNED_RUN_MODES); pins engine paddle
    precision: str = "fp32"
    cpu_threads: int | None = None
    calibration_images: str | None = None  # precision int8: a SegDataset, image folder, glob or list file

    def __post_init__(self):
        if self.engine not in (None, *ENGINES):
            raise ValueError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.run_mode not in (None, *PINNED_RUN_MODES):
            raise ValueError(f"run_mode {self.run_mode!r} is not one of {', '.join(PINNED_RUN_MODES)}")
        if self.run_mode and self.engine not in (None, "paddle"):
            raise ValueError(f"run_mode {self.run_mode!r} is a Paddle mode; engine {self.engine!r} does not take one")
        if self.precision == "bf16" and self.engine == "onnxruntime":
            raise ValueError("precision bf16 runs on openvino or paddle (oneDNN), not onnxruntime")
        if self.precision == "fp16" and self.engine not in (None, "onnxruntime"):
            raise ValueError("precision fp16 runs on a GPU through onnxruntime's TensorRT provider")
        if self.precision == "bf16" and self.run_mode not in (None, "mkldnn_bf16"):
            raise ValueError(f"precision bf16 with run_mode {self.run_mode!r}: Paddle's bf16 mode is mkldnn_bf16")
        if self.precision == "int8" and (self.engine == "paddle" or self.run_mode):
            raise ValueError("precision int8 runs on onnxruntime or openvino (a quantized ONNX graph), not on Paddle")
        if self.precision == "int8" and not self.calibration_images:
            raise ValueError("precision int8 needs engine_config.calibration_images: a folder, glob or list file of "
                             "a few hundred training images to calibrate on")
        if self.calibration_images and self.precision != "int8":
            raise ValueError(f"calibration_images applies to precision int8, not {self.precision}")
        if self.cpu_threads is not None and (not isinstance(self.cpu_threads, int) or self.cpu_threads < 1):
            raise ValueError(f"cpu_threads must be a positive integer, got {self.cpu_threads!r}")

    @property
    def paddle_run_mode(self):
        """The mode of the Paddle engine, which runs pinned or checks the others."""
        if self.engine == "paddle" and self.precision == "bf16":
            return "mkldnn_bf16"
        return self.run_mode


def engine_spec(engine=None, engine_config=None, use_hpip=False, hpi_config=None, run_mode=None, threads=None):
    """PaddleX's engine keywords (dicts) plus PaddleX's older Predict.kernel_option.run_mode -> EngineSpec,
    or a ValueError naming the key or value that is not taken. threads: what the caller's process
    computes with (an actor's or replica's threads), when engine_config does not say."""
    if engine not in PADDLEX_ENGINE_NAMES and engine is not None:
        raise ValueError(f"engine {engine!r} is not available; available: {', '.join(PADDLEX_ENGINE_NAMES)} (None: pick the fastest)")
    config = _checked(engine_config, ENGINE_CONFIG_KEYS, "engine_config")
    name = PADDLEX_ENGINE_NAMES.get(engine)
    hpi = _checked(hpi_config, HPI_CONFIG_KEYS, "hpi_config")
    backend_config = _checked(hpi.get("backend_config"), ENGINE_CONFIG_KEYS, "hpi_config backend_config")
    if hpi.get("backend") is not None or backend_config:  # auto_config alone asks for nothing
        if not use_hpip and engine != "hpi":
            raise ValueError("hpi_config applies with use_hpip=True or engine='hpi'")
        if hpi.get("backend") is not None:
            if hpi["backend"] not in ENGINES:
                raise ValueError(f"hpi_config backend {hpi['backend']!r} is not one of {', '.join(ENGINES)}")
            name = hpi["backend"]
        config = {**backend_config, **config}
    config = with_shorthands(config, run_mode=run_mode)
    images = config.get("calibration_images")
    if images and os.path.exists(images):
        images = os.path.abspath(images)  # a Ray actor or replica may run elsewhere on this machine
    return EngineSpec(name, config.get("run_mode"), config.get("precision") or "fp32",
                      config.get("cpu_threads") or threads, images)


def with_shorthands(engine_config, **values):
    """engine_config (a dict) with the keys given apart (create_model's run_mode= and cpu_threads=,
    Predict.kernel_option.run_mode) put in; a ValueError when both say and disagree."""
    config = dict(engine_config or {})
    for key, value in values.items():
        if value is not None and config.get(key, value) != value:
            raise ValueError(f"{key}={value!r} and engine_config {key} {config[key]!r} disagree; pass one")
        if value is not None:
            config[key] = value
    return config


def _checked(mapping, keys, what):
    mapping = {k: v for k, v in dict(mapping or {}).items() if v is not None}
    unknown = sorted(set(mapping) - set(keys))
    if unknown:
        raise ValueError(f"{what} key(s) {', '.join(unknown)} not taken; accepted: {', '.join(keys)}")
    return mapping
