"""Check a SegDataset pair by pair, as PaddleX's check_dataset mode does, and write
OUTPUT/check_dataset_result.json, OUTPUT/check_dataset/histogram.png and sample overlays.

Every pair is read and decoded: the image and label exist and decode, their sizes match, the
label is single-channel, and its values are classes (below len(labels.txt) when there is one) or
255 (ignore). Every problem is listed with its list file and line. Only a 256-bin histogram per
split is kept, so memory stays flat in the dataset's size. `check_pairs` says where the pairs are
checked: in this process by default, or in Ray Data tasks (raysegment.batch.pair_checker, which the
check_dataset mode uses from RAY_MIN_SAMPLES pairs up).
"""

import json
import os

import numpy as np

from .. import storage
from .dataset import SPLITS, Problem, Sample, iter_split, read_class_names, read_pair
from .labels import IGNORE_INDEX, LabelError, default_class_names
from .image import ImageError, encode_image
from .visualize import draw_histogram, overlay

NUM_DEMO = 10  # overlays saved per split


def check_sample(sample, num_classes=None):
    """(problems, histogram of label values 0..255) for one pair; never raises for bad data."""
    hist = np.zeros(256, np.int64)

    def problem(message):
        return [Problem(sample.list_file, sample.line, message)], hist

    try:
        _, label = read_pair(sample.image, sample.label)
    except (ImageError, LabelError) as e:
        return problem(str(e))
    except storage.StorageError as e:
        return problem(f"{'image' if sample.image in str(e) else 'label'} {e}")
    counts = np.bincount(label.ravel(), minlength=256)
    hist[:] = counts[:256]
    limit = num_classes if num_classes else IGNORE_INDEX
    bad = [v for v in np.flatnonzero(counts) if v >= limit and v != IGNORE_INDEX]
    if bad:
        shown = ", ".join(str(v) for v in bad[:8]) + (" ..." if len(bad) > 8 else "")
        allowed = f"0..{num_classes - 1} (labels.txt has {num_classes} classes)" if num_classes else "0..254"
        return problem(f"label {sample.label} has values {shown} outside {allowed} or {IGNORE_INDEX} (ignore)")
    return [], hist


def check_batch(batch, num_classes):
    """Rows of Sample fields (a Ray Data batch) -> the same rows plus problems (JSON) and histogram."""
    problems, hists = [], []
    for image, label, list_file, line in zip(batch["image"], batch["label"], batch["list_file"], batch["line"]):
        found, hist = check_sample(Sample(str(image), str(label), str(list_file), int(line)), num_classes)
        problems.append(json.dumps([p.to_json() for p in found]))
        hists.append(hist)
    return {**batch, "problems": np.array(problems, dtype=object), "hist": np.stack(hists)}


def checked_rows(batch):
    """check_batch's rows -> (Sample, problems, histogram) each."""
    for image, label, list_file, line, problems, hist in zip(
        batch["image"], batch["label"], batch["list_file"], batch["line"], batch["problems"], batch["hist"]
    ):
        yield Sample(str(image), str(label), str(list_file), int(line)), [Problem(**p) for p in json.loads(problems)], hist


def check_locally(samples, num_classes):
    """(Sample, problems, histogram) of each pair, checked in this process."""
    for sample in samples:
        yield (sample, *check_sample(sample, num_classes))


def check_dataset(dataset_dir, output, check_pairs=check_locally, num_demo=NUM_DEMO):
    """Check every pair of train.txt and val.txt; write the result files and return the result dict.
    check_pairs(samples, num_classes) yields (Sample, problems, histogram) per pair, in any order."""
    if not dataset_dir:
        raise ValueError("no dataset given: set Global.dataset_dir to a SegDataset folder or s3:// prefix")
    if not storage.is_s3(dataset_dir) and not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"dataset folder {dataset_dir!r} does not exist; set Global.dataset_dir")
    class_names = read_class_names(dataset_dir)
    num_classes = len(class_names) if class_names else None
    samples, problems = _listed_pairs(dataset_dir)
    hists, good, found = _tally(check_pairs(samples["train"] + samples["val"], num_classes), num_demo)
    problems = sorted(problems + found, key=lambda p: (p.file, p.line or 0))  # Ray returns rows in any order

    labelled = np.flatnonzero(sum(hists.values())[:IGNORE_INDEX])
    if num_classes is None:
        num_classes = int(labelled.max()) + 1 if labelled.size else 0
        class_names = default_class_names(num_classes)
    demo_dir = os.path.join(output, "check_dataset", "demo_img")
    attributes = {"num_classes": num_classes, "class_names": class_names}
    for split in SPLITS:
        attributes[f"{split}_samples"] = len(samples[split])
        attributes[f"{split}_sample_paths"] = [_save_overlay(s, demo_dir, output, split) for s in good[split]]
    hist_path = os.path.join(output, "check_dataset", "histogram.png")
    storage.write_bytes(hist_path, encode_image(draw_histogram(class_names, {s: hists[s][:num_classes] for s in SPLITS}), ".png"))
    result = {
        "done_flag": True,
        "check_pass": not problems,
        "attributes": attributes,
        "analysis": {
            "histogram": os.path.relpath(hist_path, output),
            "class_pixel_counts": {s: hists[s][:num_classes].tolist() for s in SPLITS},
            "ignored_pixels": {s: int(hists[s][IGNORE_INDEX]) for s in SPLITS},
        },
        "dataset_path": dataset_dir,
        "show_type": "image",
        "dataset_type": "SegDataset",
        "errors": [p.to_json() for p in problems],
    }
    if problems:
        result["message"] = f"{len(problems)} problem(s) found; the first: {problems[0]}"
    storage.write_bytes(os.path.join(output, "check_dataset_result.json"), json.dumps(result, indent=2, ensure_ascii=False).encode())
    return result


def _listed_pairs(dataset_dir):
    """({split: [Sample]}, [Problem]) of the list files: lines that name no usable pair, and empty splits."""
    samples, problems = {split: [] for split in SPLITS}, []
    for split in SPLITS:
        for item in iter_split(dataset_dir, split):
            (problems if isinstance(item, Problem) else samples[split]).append(item)
        if not samples[split] and not any(p.file == f"{split}.txt" and p.line is None for p in problems):
            problems.append(Problem(f"{split}.txt", None, "the split is empty; list pairs in it or enable CheckDataset.split"))
    return samples, problems


def _tally(checks, num_demo):
    """(label histogram per split, the first `num_demo` good pairs per split, problems) of check_pairs' answers."""
    hists = {split: np.zeros(256, np.int64) for split in SPLITS}
    good, problems = {split: [] for split in SPLITS}, []
    for sample, found, hist in checks:
        split = sample.list_file[: -len(".txt")]
        hists[split] += hist
        problems += found
        if not found:
            good[split] = sorted(good[split] + [sample], key=lambda s: s.line)[:num_demo]
    return hists, good, problems


def _save_overlay(sample, demo_dir, output, split):
    rgb, label = read_pair(sample.image, sample.label)
    stem = os.path.splitext(os.path.basename(sample.image))[0]
    path = os.path.join(demo_dir, f"{split}_{stem}.jpg")
    storage.write_bytes(path, encode_image(overlay(rgb, label)))
    return os.path.relpath(path, output)


def check_from_config(cfg, check_pairs=check_locally):
    """Global.mode=check_dataset: convert and split when asked, then check; returns the result."""
    from .convert import convert_dataset
    from .split import split_dataset

    root, cd = cfg.Global.dataset_dir, cfg.CheckDataset
    if not root:
        raise ValueError("no dataset given: set Global.dataset_dir to a SegDataset folder or s3:// prefix")
    steps = {}
    if cd.convert.enable:
        if not cd.convert.src_dataset_type:
            raise ValueError("CheckDataset.convert.enable is true but CheckDataset.convert.src_dataset_type is not set (LabelMe or VOC)")
        pairs, problems = convert_dataset(root, cd.convert.src_dataset_type)
        steps["convert"] = {"src_dataset_type": cd.convert.src_dataset_type, "pairs": pairs, "errors": [p.to_json() for p in problems]}
    if cd.split.enable:
        n_train, n_val = split_dataset(root, cd.split.train_percent, cd.split.val_percent, cd.split.seed)
        steps["split"] = {"train_samples": n_train, "val_samples": n_val, "backups": ["train.txt.bak", "val.txt.bak"]}
    result = check_dataset(root, cfg.Global.output, check_pairs)
    if steps:
        result.update(steps)
        storage.write_bytes(os.path.join(cfg.Global.output, "check_dataset_result.json"), json.dumps(result, indent=2, ensure_ascii=False).encode())
    return result
