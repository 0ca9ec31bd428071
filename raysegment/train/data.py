"""Training batches: pair URIs -> decoded, augmented arrays, in Ray Data CPU tasks or in-process.

Both paths use `load_augment`, so `train(cfg)` without Ray sees the same data as a Ray worker.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import storage
from ..data.augment import augment_pair
from ..data.dataset import Problem, iter_split, read_pair
from ..data.labels import decode_label


def split_rows(dataset_dir, split):
    """[{"image": uri, "label": uri}, ...] of a split; ValueError listing the first bad lines."""
    rows, problems = [], []
    for item in iter_split(dataset_dir, split):
        if isinstance(item, Problem):
            problems.append(str(item))
        else:
            rows.append({"image": item.image, "label": item.label})
    if problems:
        raise ValueError(f"{dataset_dir}: {len(problems)} problem(s) in {split}.txt, e.g. {problems[0]}; "
                         "run jobs/check_dataset.py for the full list")
    return rows


def _label_histogram(label_uri, num_classes):
    label = decode_label(storage.read_bytes(label_uri), name=label_uri)
    return np.bincount(label.ravel(), minlength=256)[:num_classes]


def median_frequency_weights(rows, num_classes, threads=8):
    """Per-class loss weights by median frequency balancing (SegNet's recipe for CamVid):
    weight_c = median(freq) / freq_c, where freq_c is class c's pixels over the labelled pixels
    of the training labels that contain c. Rare classes (poles, signs) weigh more, sky and
    road less. A class that no label contains gets weight 0: there is nothing to learn it from."""
    counts = np.zeros(num_classes)
    pixels_where_present = np.zeros(num_classes)
    with ThreadPoolExecutor(threads) as pool:  # decoding PNGs and reading from S3 release the GIL
        for hist in pool.map(_label_histogram, [r["label"] for r in rows], [num_classes] * len(rows)):
            counts += hist
            pixels_where_present += (hist > 0) * hist.sum()  # labelled pixels only: 255 is ignored
    present = counts > 0
    if not present.any():
        raise ValueError(f"no training label contains any of classes 0..{num_classes - 1}")
    freq = counts[present] / pixels_where_present[present]
    weights = np.zeros(num_classes)
    weights[present] = np.median(freq) / freq
    return [round(float(w), 4) for w in weights]


def load_augment(batch, spec, seed=None):
    """{"image": uris, "label": uris} -> {"x": (B, 3, h, w) float32, "y": (B, h, w) int64}.

    A pair that cannot be read stops training with its name: jobs/check_dataset.py finds these first.
    """
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for image_uri, label_uri in zip(batch["image"], batch["label"]):
        img, label = read_pair(image_uri, label_uri)
        x, y = augment_pair(img, label, spec, rng)
        xs.append(x)
        ys.append(y)
    return {"x": np.stack(xs), "y": np.stack(ys)}


def local_batches(rows, spec, batch_size, seed=0):
    """Endless (x, y) batches in one process: reshuffled every epoch, last partial batch dropped."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(rows))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            chunk = [rows[i] for i in order[start : start + batch_size]]
            out = load_augment({"image": [r["image"] for r in chunk], "label": [r["label"] for r in chunk]}, spec, rng.integers(1 << 31))
            yield out["x"], out["y"]


def ray_dataset(rows, spec):
    """A Ray Dataset of augmented samples; each epoch re-runs decoding and augmentation in CPU tasks."""
    import ray

    from ..ray_env import READ_CPUS

    return ray.data.from_items(rows).random_shuffle().map_batches(
        load_augment, fn_kwargs={"spec": spec}, batch_size=8, num_cpus=READ_CPUS, batch_format="numpy"
    )


def shard_batches(shard, batch_size):
    """Endless (x, y) batches from a Ray Train dataset shard; every worker gets the same count."""
    while True:
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True):
            yield batch["x"], batch["y"]
