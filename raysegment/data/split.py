"""Re-split train.txt + val.txt by percentages, as PaddleX's CheckDataset.split does.

The old list files are kept as train.txt.bak and val.txt.bak; the same seed gives the same split.
"""

import random

from .. import storage


def split_dataset(root, train_percent, val_percent, seed=0):
    """Returns (train count, val count)."""
    if train_percent is None or val_percent is None:
        raise ValueError("CheckDataset.split needs both train_percent and val_percent")
    if train_percent + val_percent != 100:
        raise ValueError(f"CheckDataset.split.train_percent ({train_percent}) + val_percent ({val_percent}) must be 100")
    if not 0 < train_percent < 100:
        raise ValueError(f"CheckDataset.split.train_percent must be between 1 and 99, got {train_percent}")
    lines = []
    for split in ("train", "val"):
        uri = storage.join(root, f"{split}.txt")
        if storage.exists(uri):
            data = storage.read_bytes(uri)
            storage.write_bytes(uri + ".bak", data)
            lines += [ln.strip() for ln in data.decode("utf-8").splitlines() if ln.strip()]
    if len(lines) < 2:
        raise ValueError(f"{root} lists {len(lines)} pair(s) in train.txt and val.txt; a split needs at least 2")
    lines.sort()  # the new split must not depend on the old one's order
    random.Random(seed).shuffle(lines)
    n_train = min(max(round(len(lines) * train_percent / 100), 1), len(lines) - 1)
    for split, part in (("train", lines[:n_train]), ("val", lines[n_train:])):
        storage.write_bytes(storage.join(root, f"{split}.txt"), "".join(f"{ln}\n" for ln in part).encode())
    return n_train, len(lines) - n_train
