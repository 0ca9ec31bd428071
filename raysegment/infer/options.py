"""The inference settings every front door shares, declared once: create_model's keywords, the
Predict section of a model config, the Serve app's args and a pipeline file's module all take them
as these fields (their dataclasses inherit `InferenceOptions`, so a YAML stays flat, as PaddleX
writes it). No Paddle import: configs are checked before any engine loads.

    target_size, slide_window, slide_stride, max_image_pixels      what the Predictor is given
    engine, engine_config, use_hpip, hpi_config, kernel_option     PaddleX's engine keys (engines/spec.py)

How many threads a Ray actor or replica computes with is ray_env's decision (its Placement), not
engine_config.cpu_threads': a config that sets both is refused.
"""

import dataclasses
from dataclasses import dataclass, field

from .engines.spec import ENGINES, PADDLEX_ENGINE_NAMES, PINNED_RUN_MODES, PRECISIONS, engine_spec

MAX_IMAGE_PIXELS = 40_000_000  # decoded pixels an input may have (decompression bombs)


def choice(*values):
    """Field metadata: the value must be one of these (config.py checks it)."""
    return {"choices": values}


def at_least(lo):
    """Field metadata: the value must be at least lo (config.py checks it)."""
    return {"min": lo}


@dataclass
class EngineConfig:
    """PaddleX's engine_config."""

    # paddle.inference CPU mode (pins engine paddle): mkldnn, paddle, or mkldnn_bf16 (opt-in bf16)
    run_mode: str | None = field(default=None, metadata=choice(None, *PINNED_RUN_MODES))
    # threads of a process nothing else sizes (create_model); on Ray, threads_per_actor / threads_per_replica
    cpu_threads: int | None = field(default=None, metadata=at_least(1))
    # None: fp32; bf16 (CPU: OpenVINO or oneDNN), fp16 (GPU: TensorRT), int8 (ONNX Runtime or OpenVINO)
    precision: str | None = field(default=None, metadata=choice(None, *PRECISIONS))
    # precision int8 only (ours, not PaddleX's): the images to calibrate on, a SegDataset folder (its
    # train split) or an image folder, glob or list file; quantized once per machine, model and shape
    calibration_images: str | None = None


@dataclass
class HpiConfig:
    """PaddleX's hpi_config: a backend to pin, and its engine_config."""

    backend: str | None = field(default=None, metadata=choice(None, *ENGINES))
    backend_config: EngineConfig = field(default_factory=EngineConfig)
    auto_config: bool = True  # PaddleX's; picking is what an unset backend does here


@dataclass
class KernelOption:
    """PaddleX 3.0's kernel_option."""

    # its spelling of engine_config.run_mode (pins engine paddle); set one of the two
    run_mode: str | None = field(default=None, metadata=choice(None, *PINNED_RUN_MODES))


@dataclass
class EngineKeys:
    """PaddleX's engine keywords. Unset (None): per input shape, the fastest installed engine whose
    masks equal Paddle's (infer/engines/choice.py)."""

    engine: str | None = field(default=None, metadata=choice(None, *PADDLEX_ENGINE_NAMES))
    engine_config: EngineConfig | None = None
    use_hpip: bool | None = None  # PaddleX's high-performance switch: allows hpi_config
    hpi_config: HpiConfig | None = None
    kernel_option: KernelOption | None = None

    def engine_spec(self, threads=None):
        """The EngineSpec these keys ask for; threads: the process's, unless engine_config says."""
        run_mode = self.kernel_option.run_mode if self.kernel_option else None
        return engine_spec(self.engine, _plain(self.engine_config), bool(self.use_hpip), _plain(self.hpi_config),
                           run_mode=run_mode, threads=threads)

    @property
    def cpu_threads(self):
        """The threads engine_config (or hpi_config's backend_config) asks for, or None."""
        hpi = self.hpi_config.backend_config.cpu_threads if self.hpi_config else None
        return (self.engine_config.cpu_threads if self.engine_config else None) or hpi

    def over(self, *fallbacks):
        """These keys, each unset one taken from the first of `fallbacks` that sets it (a pipeline's
        module keys over create_pipeline's arguments over the file's top level)."""
        merged = {f.name: getattr(self, f.name) for f in dataclasses.fields(EngineKeys)}
        for fallback in fallbacks:
            merged = {k: v if v is not None else getattr(fallback, k) for k, v in merged.items()}
        return dataclasses.replace(self, **merged)


@dataclass
class InferenceOptions(EngineKeys):
    """What a Predictor runs with, wherever it is made."""

    # None: the model folder's setting; -1: no resize; N: N x N; [w, h]
    target_size: int | list[int] | None = None
    # slide mode (huge images): windows of slide_window pixels ([w, h] or N) of the resized input,
    # every slide_stride pixels (null: 3/4 of the window); null: whole images
    slide_window: int | list[int] | None = None
    slide_stride: int | list[int] | None = None
    max_image_pixels: int = field(default=MAX_IMAGE_PIXELS, metadata=at_least(1))

    def check(self, where):
        """A ValueError naming the key of `where` that does not hold together."""
        check_target_size(self.target_size, f"{where}.target_size")
        check_slide(self.slide_window, self.slide_stride, (f"{where}.slide_window", f"{where}.slide_stride"))
        try:
            self.engine_spec()
        except ValueError as e:
            raise ValueError(f"{where} engine keys: {e}") from None

    @property
    def slide(self):
        return check_slide(self.slide_window, self.slide_stride)


def check_target_size(size, name="target_size"):
    """None, -1, N or (width, height) -> the same (a list made a tuple); a ValueError naming `name` otherwise."""
    ok = (
        size is None
        or (isinstance(size, int) and not isinstance(size, bool) and (size == -1 or size > 0))
        or (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size))
    )
    if not ok:
        raise ValueError(f"{name}: expected -1, a positive int or [width, height] (or None: the model folder's), got {size!r}")
    return tuple(size) if isinstance(size, list) else size


def check_slide(window, stride=None, names=("slide_window", "slide_stride")):
    """(window, stride) as ((w, h), (w, h)), or None when `window` is None. An int N means (N, N);
    stride None: three quarters of the window (a quarter of overlap)."""
    if window is None:
        if stride is not None:
            raise ValueError(f"{names[1]} is set but {names[0]} is not; set {names[0]} to slide")
        return None

    def pair(value, name):
        value = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
            raise ValueError(f"{name} must be a positive int or (width, height), got {value!r}")
        return tuple(value)

    window = pair(window, names[0])
    stride = pair(stride, names[1]) if stride is not None else tuple(max(w * 3 // 4, 1) for w in window)
    if any(s > w for s, w in zip(stride, window)):
        raise ValueError(f"{names[1]} {stride} is larger than {names[0]} {window}: pixels between windows would "
                         "never be predicted; use a stride at most the window")
    return window, stride


def _plain(section):
    return dataclasses.asdict(section) if section is not None else None
