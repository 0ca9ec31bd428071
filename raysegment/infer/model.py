"""What `raysegment.create_model` returns: PaddleX's predictor interface over our Predictor."""

from ..data.sources import iter_inputs, load_rgb
from .predictor import check_target_size, load_predictor
from .result import SegResult

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # same default as Predict.max_image_pixels
# PaddleX engine names this package runs, both through paddle.inference (oneDNN checked against plain
# Paddle on CPU, see engines.py), and the `engine_config` keys they take
PADDLEX_ENGINES = ("paddle", "paddle_static")
ENGINE_CONFIG_KEYS = ("run_mode", "cpu_threads")


def paddlex_engine_options(engine=None, engine_config=None, use_hpip=False, hpi_config=None, run_mode=None):
    """PaddleX's create_model engine keywords -> our Predictor keywords, or a ValueError naming what
    is not available. use_hpip (PaddleX's "pick the fastest backend for this model") is what the
    default already does; hpi_config's backend lists are not taken yet."""
    if hpi_config is not None:
        raise ValueError("hpi_config is not supported yet: the default (or use_hpip=True) already picks the fastest "
                         "CPU mode whose masks equal plain Paddle's; pin one with engine_config={'run_mode': ...}")
    if engine is not None and engine not in PADDLEX_ENGINES:
        raise ValueError(f"engine {engine!r} is not available in raysegment yet; available: {', '.join(PADDLEX_ENGINES)} "
                         "(paddle.inference; oneDNN on CPU once it matches plain Paddle)")
    config = dict(engine_config or {})
    unknown = sorted(set(config) - set(ENGINE_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"engine_config key(s) {', '.join(unknown)} not taken; accepted: {', '.join(ENGINE_CONFIG_KEYS)}")
    if run_mode is not None and config.get("run_mode", run_mode) != run_mode:
        raise ValueError(f"run_mode={run_mode!r} and engine_config run_mode {config['run_mode']!r} disagree; pass one")
    return config


class SegModel:
    def __init__(self, predictor, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        self.predictor = predictor
        self.max_image_pixels = max_image_pixels

    @classmethod
    def create(cls, model_name, model_dir, device, target_size, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
               engine=None, engine_config=None, use_hpip=False, hpi_config=None, **kw):
        kw.update(paddlex_engine_options(engine, engine_config, use_hpip, hpi_config, kw.get("run_mode")))
        return cls(load_predictor(model_name, model_dir, device, target_size, **kw), max_image_pixels)

    @property
    def model_name(self):
        return self.predictor.model_name

    def predict(self, input, batch_size=1, target_size=None):
        """Yield one SegResult per input image, reading and predicting `batch_size` at a time.

        A bad input (missing file, unreadable URL, non-image bytes) raises an error naming it;
        the bulk job (raysegment.batch) is the one that records errors and goes on.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        target_size = check_target_size(target_size)
        batch = []
        for uri, item in iter_inputs(input):
            batch.append((uri, load_rgb(uri, item, self.max_image_pixels)))
            if len(batch) == batch_size:
                yield from self._run(batch, target_size)
                batch = []
        if batch:
            yield from self._run(batch, target_size)

    __call__ = predict

    def _run(self, batch, target_size):
        masks = self.predictor.predict([img for _, img in batch], target_size)
        for (uri, img), mask in zip(batch, masks):
            yield SegResult(uri, img, mask[None], self.predictor.class_names)

