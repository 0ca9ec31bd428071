"""What `raysegment.create_model` returns: PaddleX's predictor interface over our Predictor."""

from ..data.sources import iter_inputs, load_pages
from .engine_spec import engine_spec
from .predictor import check_slide, check_target_size, load_predictor
from .result import SegResult

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # same default as Predict.max_image_pixels


class SegModel:
    def __init__(self, predictor, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        self.predictor = predictor
        self.max_image_pixels = max_image_pixels

    @classmethod
    def create(cls, model_name, model_dir, device, target_size, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
               engine=None, engine_config=None, use_hpip=False, hpi_config=None, slide_window=None, slide_stride=None, **kw):
        spec = engine_spec(engine, engine_config, use_hpip, hpi_config, kw.pop("run_mode", None), kw.pop("cpu_threads", None))
        slide = check_slide(slide_window, slide_stride)
        return cls(load_predictor(model_name, model_dir, device, target_size, engine=spec, slide=slide, **kw), max_image_pixels)

    @property
    def model_name(self):
        return self.predictor.model_name

    def predict(self, input, batch_size=1, target_size=None):
        """Yield one SegResult per input image (per page of a PDF, with its `page_index`), reading
        and predicting `batch_size` at a time.

        A bad input (missing file, unreadable URL, non-image bytes) raises an error naming it;
        the bulk job (raysegment.batch) is the one that records errors and goes on.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        target_size = check_target_size(target_size)
        batch = []
        for uri, item in iter_inputs(input):
            for page_index, img in load_pages(uri, item, self.max_image_pixels):
                batch.append((uri, page_index, img))
                if len(batch) == batch_size:
                    yield from self._run(batch, target_size)
                    batch = []
        if batch:
            yield from self._run(batch, target_size)

    __call__ = predict

    def _run(self, batch, target_size):
        masks = self.predictor.predict([img for _, _, img in batch], target_size)
        for (uri, page_index, img), mask in zip(batch, masks):
            yield SegResult(uri, img, mask[None], self.predictor.class_names, page_index)

