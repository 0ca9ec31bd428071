"""Datasets, transforms, image decoding and input sources; and the files shipped with the package."""

import os

SAMPLES = os.path.join(os.path.dirname(__file__), "samples")  # four CamVid street frames, 480x360
BUNDLED_MODEL = os.path.join(os.path.dirname(__file__), "models", "PP-LiteSeg-T_camvid")  # 11 CamVid classes
