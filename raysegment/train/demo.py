"""A tiny SegDataset made from the bundled street frames, to try training in a minute on a fresh
clone (CamVid itself is not in the repository).

    python jobs/make_demo_dataset.py output/demo_dataset

Each of the four bundled CamVid frames, and its mirror image, with the bundled model's mask as its
label (pseudo-labels: good enough to see a loss fall, not to measure a model): 8 pairs, 6 in
train.txt and 2 in val.txt, labels.txt with the model's 11 class names.
"""

import os

import cv2

from ..data import BUNDLED_MODEL, SAMPLES
from ..data.image import decode_image
from ..data.labels import encode_label_png


def make_demo_dataset(out):
    """Write the dataset into `out` (the same files again if it is there already); returns `out`."""
    from ..infer import Predictor

    predictor = Predictor.load(BUNDLED_MODEL, device="cpu")
    lines = []
    for name in sorted(f for f in os.listdir(SAMPLES) if f.endswith(".jpg")):
        with open(os.path.join(SAMPLES, name), "rb") as f:
            rgb = decode_image(f.read(), name=name)
        (mask,) = predictor.predict([rgb])
        stem = os.path.splitext(name)[0]
        for suffix, image, label in (("", rgb, mask), ("_flip", rgb[:, ::-1], mask[:, ::-1])):
            image_rel, label_rel = f"images/{stem}{suffix}.jpg", f"annotations/{stem}{suffix}.png"
            for rel in (image_rel, label_rel):
                os.makedirs(os.path.join(out, os.path.dirname(rel)), exist_ok=True)
            cv2.imwrite(os.path.join(out, image_rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            with open(os.path.join(out, label_rel), "wb") as f:
                f.write(encode_label_png(label))
            lines.append(f"{image_rel} {label_rel}")
    with open(os.path.join(out, "train.txt"), "w") as f:
        f.write("".join(line + "\n" for line in lines[:6]))
    with open(os.path.join(out, "val.txt"), "w") as f:
        f.write("".join(line + "\n" for line in lines[6:]))
    with open(os.path.join(out, "labels.txt"), "w") as f:
        f.write("".join(n + "\n" for n in predictor.class_names))
    return out
