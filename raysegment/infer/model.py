"""What `raysegment.create_model` returns: PaddleX's predictor interface over our Predictor."""

from ..data.sources import iter_inputs, load_pages
from ..models import check_model_name
from .model_files import read_model_folder
from .options import MAX_IMAGE_PIXELS, InferenceOptions, check_target_size
from .predictor import Predictor
from .result import SegResult


class SegModel:
    def __init__(self, predictor, max_image_pixels=MAX_IMAGE_PIXELS):
        self.predictor = predictor
        self.max_image_pixels = max_image_pixels

    @classmethod
    def create(cls, model_name=None, model_dir=None, device=None, options=None, num_classes=None):
        """A model from `model_dir`, or PaddleX's official folder of `model_name` (from PaddleX's
        cache, downloaded there when missing: raysegment/downloads.py); options: InferenceOptions."""
        options = options or InferenceOptions()
        if model_dir is None:
            if model_name is None:
                raise ValueError("pass a model_name or a model_dir")
            from ..downloads import fetch_official_model

            model_dir = fetch_official_model(check_model_name(model_name), check=read_model_folder)
        return cls(Predictor.load(model_dir, options, device, model_name=model_name, num_classes=num_classes),
                   options.max_image_pixels)

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
