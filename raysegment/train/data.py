"""Training batches: pair URIs -> decoded, augmented arrays, in Ray Data CPU tasks or in-process.

Both paths use `load_augment`, so `train(cfg)` without Ray sees the same data as a Ray worker.
"""

import numpy as np

from ..data.augment import augment_pair
from ..data.dataset import Problem, iter_split, read_pair


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
