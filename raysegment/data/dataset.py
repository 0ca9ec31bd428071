"""The PaddleX SegDataset layout, on local disk or under an s3:// prefix.

    dataset_dir/
      images/...  annotations/...   any folders: the list files name the files
      train.txt  val.txt            one "image_path label_path" a line, relative to dataset_dir
      labels.txt                    optional: one class name a line, line i naming class i

Labels are single-channel PNGs of class ids (8-bit gray or palette), 255 meaning "ignore".
"""

import posixpath
from dataclasses import dataclass

from .. import storage
from .image import decode_image
from .labels import LabelError, decode_label

SPLITS = ("train", "val")


@dataclass(frozen=True)
class Sample:
    image: str  # full path or URI
    label: str
    list_file: str  # e.g. "train.txt"
    line: int


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, located by file and (for list files) line."""

    file: str
    line: int | None
    message: str

    def __str__(self):
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"

    def to_json(self):
        return {"file": self.file, "line": self.line, "message": self.message}


def read_class_names(root):
    """Class names from labels.txt, or None when there is none."""
    uri = storage.join(root, "labels.txt")
    if not storage.exists(uri):
        return None
    names = []
    for line in storage.read_bytes(uri).decode("utf-8").splitlines():
        parts = line.split(maxsplit=1)
        if parts:  # "name" or PaddleX's "id name"
            names.append(parts[1].strip() if len(parts) == 2 and parts[0].isdigit() else line.strip())
    return names


def safe_relpath(rel):
    """Normalise a list-file path to '/'-separated; None when it is absolute or leaves the dataset."""
    rel = rel.replace("\\", "/")
    norm = posixpath.normpath(rel)
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":") or norm == ".." or norm.startswith("../"):
        return None
    return norm


def iter_split(root, split):
    """Yield a Sample for each good line of `<split>.txt` and a Problem for each bad one, streaming."""
    list_file = f"{split}.txt"
    uri = storage.join(root, list_file)
    if not storage.exists(uri):
        yield Problem(list_file, None, f"missing list file; expected {uri} with one 'image_path label_path' a line")
        return
    text = storage.read_bytes(uri).decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            yield Problem(list_file, number, f"expected 'image_path label_path', got {len(parts)} path{'s' * (len(parts) != 1)}: {line.strip()!r}")
            continue
        rels = [safe_relpath(p) for p in parts]
        bad = [p for p, r in zip(parts, rels) if r is None]
        if bad:
            yield Problem(list_file, number, f"path {bad[0]!r} is outside the dataset folder; list paths must be relative to it")
            continue
        yield Sample(storage.join(root, rels[0]), storage.join(root, rels[1]), list_file, number)


def read_pair(image_uri, label_uri):
    """Read and decode an image and its label: ((H, W, 3) RGB, (H, W) ids). Raises ImageError,
    LabelError or StorageError naming the file, and LabelError when their sizes differ."""
    img = decode_image(storage.read_bytes(image_uri), name=f"image {image_uri}")
    label = decode_label(storage.read_bytes(label_uri), name=label_uri)
    if label.shape != img.shape[:2]:
        raise LabelError(f"image {image_uri} is {img.shape[1]}x{img.shape[0]} but label {label_uri} is {label.shape[1]}x{label.shape[0]}")
    return img, label
