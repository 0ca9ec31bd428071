"""raysegment: PaddleX semantic segmentation, trained with Ray Train, run with Ray Data and Ray Serve.

    import raysegment
    model = raysegment.create_model("PP-LiteSeg-T", model_dir="path/to/inference")
    for res in model.predict("images/", batch_size=4):
        res.print()
        res.save_to_img("output/")
        res.save_to_json("output/")

    pipeline = raysegment.create_pipeline(pipeline="semantic_segmentation")  # or a PaddleX pipeline YAML
"""

import os
import warnings

# Paddle warns on every import that ccache (a C++ build cache for custom ops) is missing, and its
# C++ side logs each graph it builds; neither is news to a user. GLOG_minloglevel must be set
# before paddle loads; a user's own setting wins.
os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message="No ccache found")
# Paddle 3.2 warns once per process that paddle.max differs from torch.max; we call Paddle's API as Paddle's
warnings.filterwarnings("ignore", message=r"\s*Non compatible API")

from .config import ConfigError, inference_options, load_config  # noqa: E402  (light: no Paddle)
from .models import MODELS, build_model  # noqa: E402  (the registry: architectures load when built)
from .pipeline import create_pipeline  # noqa: E402  (light: the model loads when the pipeline is made)

__version__ = "0.1.0"


def create_model(model_name=None, model_dir=None, device=None, target_size=None, num_classes=None, **options):
    """A PaddleX-style model: `.predict(input, batch_size=1, target_size=None)` yields SegResults.

    model_dir: an exported inference folder (ours or PaddleX's) or a checkpoint folder; None looks
    in PaddleX's cache of official models. device: 'cpu', 'gpu', 'gpu:N' or None (GPU if any).
    target_size: None (the folder's setting), -1 (no resize), N or (width, height). num_classes: for
    a PaddleX folder that does not name its classes.
    Other keywords are the inference options (raysegment/infer/options.py), checked by name:
    slide_window, slide_stride, max_image_pixels (default 40 M), and PaddleX's engine keywords.
    Engines: by default the fastest installed one (OpenVINO, ONNX Runtime, Paddle oneDNN or plain
    Paddle) whose masks equal Paddle's, per input shape; PaddleX's keywords pin one or opt in to bf16:
    engine="paddle" | "paddle_static" | "onnxruntime" | "openvino" | "hpi", engine_config={"run_mode",
    "cpu_threads", "precision"}, use_hpip, hpi_config={"backend", "backend_config"}; run_mode= and
    cpu_threads= are shorthands for engine_config's.
    """
    from .infer.model import SegModel

    return SegModel.create(model_name, model_dir, device, inference_options(target_size=target_size, **options), num_classes)


def __getattr__(name):
    # Paddle takes ~1.3 s to import: `import raysegment` (and every module that only reads configs,
    # lists inputs or decodes images, e.g. Ray Data's read tasks) must not pay for it
    if name == "SegModel":
        from .infer.model import SegModel

        return SegModel
    raise AttributeError(f"module 'raysegment' has no attribute {name!r}")


__all__ = ["create_model", "create_pipeline", "build_model", "load_config", "ConfigError", "MODELS", "SegModel", "__version__"]
