"""Convert LabelMe and VOC datasets to the SegDataset layout, in place, as PaddleX does.

LabelMe: `images/` and `annotations/*.json` (polygon, rectangle and circle shapes). Each JSON
becomes `annotations/<stem>.png`, a palette PNG of class ids drawn in the file's shape order (a
later shape covers an earlier one). Classes: `labels.txt` when present (its first line is the
background), else `_background_` then the labels in sorted order. Every pair goes to train.txt
(val.txt stays empty: enable CheckDataset.split to make one).

VOC: `JPEGImages/`, `SegmentationClass/` (palette PNGs, 255 = border/ignore) and
`ImageSets/Segmentation/{train,val}.txt`. The PNGs already hold class ids, so conversion writes the
list files and labels.txt (the 21 VOC names unless a labels.txt is there).

Files that fail are listed in the returned problems and left out; the rest are converted.
"""

import json
import os

import cv2
import numpy as np

from .. import storage
from .dataset import Problem, read_class_names
from .labels import encode_label_png

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
LABELME_SHAPES = ("polygon", "rectangle", "circle")


def rasterize_labelme(doc, class_ids, name):
    """A LabelMe document -> (H, W) uint8 class ids; ValueError naming the shape that is wrong."""
    h, w = int(doc["imageHeight"]), int(doc["imageWidth"])
    label = np.zeros((h, w), np.uint8)
    for i, shape in enumerate(doc.get("shapes", [])):
        kind = shape.get("shape_type") or "polygon"
        where = f"{name} shape {i} ({shape.get('label')!r}, {kind})"
        if kind not in LABELME_SHAPES:
            raise ValueError(f"{where}: shape type {kind!r} has no area; use one of {', '.join(LABELME_SHAPES)}")
        pts = np.round(np.asarray(shape.get("points", []), np.float64)).astype(np.int32)
        cls = class_ids[shape["label"]]
        if kind == "polygon" and len(pts) >= 3:
            cv2.fillPoly(label, [pts], cls)
        elif kind == "rectangle" and len(pts) == 2:
            cv2.rectangle(label, tuple(pts[0]), tuple(pts[1]), cls, thickness=-1)
        elif kind == "circle" and len(pts) == 2:
            cv2.circle(label, tuple(pts[0]), int(round(np.linalg.norm(pts[1] - pts[0]))), cls, thickness=-1)
        else:
            raise ValueError(f"{where}: has {len(pts)} points, too few for a {kind}")
    return label


def convert_labelme(root):
    """Returns (number of pairs written, problems)."""
    problems, docs = [], []
    for uri in storage.list_files(storage.join(root, "annotations"), (".json",)):
        name = os.path.relpath(uri, root) if not storage.is_s3(root) else uri[len(root.rstrip("/")) + 1 :]
        try:
            docs.append((uri, name, json.loads(storage.read_bytes(uri))))
        except (ValueError, storage.StorageError) as e:
            problems.append(Problem(name, None, f"not a readable LabelMe JSON file ({e})"))
    names = read_class_names(root) or ["_background_"] + sorted({s["label"] for _, _, d in docs for s in d.get("shapes", []) if "label" in s})
    class_ids = {n: i for i, n in enumerate(names)}
    lines = []
    for uri, name, doc in docs:
        stem = os.path.splitext(os.path.basename(name))[0]
        image_rel = _find_image(root, name, doc, stem)
        try:
            unknown = sorted({s.get("label") for s in doc.get("shapes", [])} - set(class_ids))
            if unknown:
                raise ValueError(f"{name}: labels {unknown} are not in labels.txt")
            if image_rel is None:
                raise ValueError(f"{name}: its image {doc.get('imagePath')!r} is not in images/")
            label = rasterize_labelme(doc, class_ids, name)
        except (ValueError, KeyError, TypeError) as e:
            problems.append(Problem(name, None, str(e).removeprefix(f"{name}: ")))
            continue
        storage.write_bytes(storage.join(root, f"annotations/{stem}.png"), encode_label_png(label))
        lines.append(f"{image_rel} annotations/{stem}.png")
    _write_lists(root, {"train": lines, "val": []}, names)
    return len(lines), problems


def _find_image(root, json_name, doc, stem):
    """The image a LabelMe file belongs to, as a '/'-separated path under root, or None."""
    candidates = []
    if doc.get("imagePath"):
        rel = doc["imagePath"].replace("\\", "/")  # LabelMe on Windows writes backslashes
        candidates.append(os.path.normpath(os.path.join(os.path.dirname(json_name), rel)).replace("\\", "/"))
        candidates.append(f"images/{os.path.basename(rel)}")
    candidates += [f"images/{stem}{ext}" for ext in (".jpg", ".jpeg", ".png", ".bmp")]
    return next((c for c in candidates if not c.startswith("..") and storage.exists(storage.join(root, c))), None)


def convert_voc(root):
    """Returns (number of pairs written, problems)."""
    problems, lists = [], {}
    for split in ("train", "val"):
        rel = f"ImageSets/Segmentation/{split}.txt"
        uri = storage.join(root, rel)
        if not storage.exists(uri):
            problems.append(Problem(rel, None, "missing VOC split file"))
            lists[split] = []
            continue
        lines = []
        for number, stem in enumerate(storage.read_bytes(uri).decode().split("\n"), start=1):
            stem = stem.strip()
            if not stem:
                continue
            image, label = f"JPEGImages/{stem}.jpg", f"SegmentationClass/{stem}.png"
            missing = [p for p in (image, label) if not storage.exists(storage.join(root, p))]
            if missing:
                problems.append(Problem(rel, number, f"{missing[0]} does not exist"))
                continue
            lines.append(f"{image} {label}")
        lists[split] = lines
    _write_lists(root, lists, read_class_names(root) or VOC_CLASSES)
    return sum(len(v) for v in lists.values()), problems


def _write_lists(root, lists, class_names):
    for split, lines in lists.items():
        storage.write_bytes(storage.join(root, f"{split}.txt"), "".join(f"{ln}\n" for ln in lines).encode())
    storage.write_bytes(storage.join(root, "labels.txt"), "".join(f"{n}\n" for n in class_names).encode())


CONVERTERS = {"LabelMe": convert_labelme, "VOC": convert_voc}


def convert_dataset(root, src_dataset_type):
    if src_dataset_type not in CONVERTERS:
        raise ValueError(f"CheckDataset.convert.src_dataset_type must be one of {', '.join(CONVERTERS)}, got {src_dataset_type!r}")
    return CONVERTERS[src_dataset_type](root)
