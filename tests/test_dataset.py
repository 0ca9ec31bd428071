"""Dataset check, conversion and split on small generated datasets, local, on S3 and through Ray."""

import io
import json
import os
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import jpeg_bytes, make_dataset, png_bytes, random_image, write_label
from raysegment import storage
from raysegment.config import load_config
from raysegment.batch import pair_checker
from raysegment.data.check import check_dataset, check_from_config, check_locally
from raysegment.data.convert import VOC_CLASSES, convert_labelme, convert_voc, rasterize_labelme
from raysegment.data.dataset import decode_label, read_class_names
from raysegment.data.split import split_dataset


def label_counts(root, split, num_classes):
    counts = np.zeros(num_classes, np.int64)
    for line in (root / f"{split}.txt").read_text().split("\n"):
        if line.strip():
            label = cv2.imread(str(root / line.split()[1]), cv2.IMREAD_UNCHANGED)
            counts += np.bincount(label[label != 255].ravel(), minlength=num_classes)[:num_classes]
    return counts


def test_clean_dataset_passes_with_paddlex_result_shape(tmp_path):
    root = make_dataset(tmp_path / "ds")
    out = tmp_path / "out"
    result = check_dataset(str(root), str(out))
    on_disk = json.loads((out / "check_dataset_result.json").read_text())
    assert on_disk == result
    assert result["done_flag"] is True and result["check_pass"] is True and result["errors"] == []
    assert result["dataset_type"] == "SegDataset" and result["show_type"] == "image"
    a = result["attributes"]
    assert (a["num_classes"], a["train_samples"], a["val_samples"]) == (3, 6, 3)
    assert a["class_names"] == ["c0", "c1", "c2"]
    assert len(a["train_sample_paths"]) == 6 and len(a["val_sample_paths"]) == 3
    for rel in a["train_sample_paths"] + [result["analysis"]["histogram"]]:
        assert cv2.imread(str(out / rel)) is not None
    for split in ("train", "val"):
        assert result["analysis"]["class_pixel_counts"][split] == label_counts(root, split, 3).tolist()
    assert result["analysis"]["ignored_pixels"]["train"] == 6 * 2 * 48


def test_num_classes_without_labels_txt_comes_from_the_labels(tmp_path):
    root = make_dataset(tmp_path / "ds", num_classes=4, labels_txt=False)
    result = check_dataset(str(root), str(tmp_path / "out"))
    assert result["check_pass"] and result["attributes"]["num_classes"] == 4


def broken_dataset(root):
    """Every kind of problem the check must report, each on a known line."""
    make_dataset(root, n_train=3, n_val=1)
    rgb_label = root / "annotations" / "rgb.png"
    rgb_label.write_bytes(png_bytes(np.zeros((32, 48, 3), np.uint8)))
    write_label(root / "annotations" / "big.png", np.full((32, 48), 7, np.uint8))
    write_label(root / "annotations" / "small.png", np.zeros((16, 16), np.uint8))
    (root / "images" / "fake.jpg").write_bytes(b"not an image")
    lines = [
        "images/train_0.jpg annotations/train_0.png",  # 1: fine
        "images/train_1.jpg",  # 2: one path
        "../outside.jpg annotations/train_1.png",  # 3: escapes the folder
        "images/train_1.jpg annotations/rgb.png",  # 4: RGB label
        "images/train_1.jpg annotations/big.png",  # 5: values out of range
        "images/train_1.jpg annotations/small.png",  # 6: size mismatch
        "images/missing.jpg annotations/train_1.png",  # 7: missing image
        "images/fake.jpg annotations/train_2.png",  # 8: not an image
        "images/train_2.jpg annotations/nolabel.png",  # 9: missing label
    ]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "val.txt").unlink()
    return root


EXPECTED_PROBLEMS = [
    ("train.txt", 2, "expected 'image_path label_path', got 1 path"),
    ("train.txt", 3, "path '../outside.jpg' is outside the dataset folder"),
    ("train.txt", 4, "has RGB colour channels; labels must be single-channel"),
    ("train.txt", 5, r"has values 7 outside 0\.\.2 \(labels.txt has 3 classes\) or 255 \(ignore\)"),
    ("train.txt", 6, "is 48x32 but label"),
    ("train.txt", 7, "missing.jpg'? does not exist"),
    ("train.txt", 8, "fake.jpg is not a decodable image"),
    ("train.txt", 9, "label .*nolabel.png'? does not exist"),
    ("val.txt", None, "missing list file"),
]


def assert_problems(result):
    assert result["check_pass"] is False and result["done_flag"] is True
    got = [(e["file"], e["line"], e["message"]) for e in result["errors"]]
    assert len(got) == len(EXPECTED_PROBLEMS), got
    for (file, line, message), expected in zip(got, EXPECTED_PROBLEMS):
        assert (file, line) == expected[:2] and re.search(expected[2], message), (file, line, message)
    assert result["message"].startswith("9 problem(s) found; the first: train.txt:2:")
    assert result["attributes"]["train_samples"] == 7  # lines that name two paths inside the folder


def test_broken_dataset_lists_every_problem_by_file_and_line(tmp_path):
    assert_problems(check_dataset(str(broken_dataset(tmp_path / "ds")), str(tmp_path / "out")))


def test_empty_split_is_a_problem(tmp_path):
    root = make_dataset(tmp_path / "ds")
    (root / "val.txt").write_text("\n")
    result = check_dataset(str(root), str(tmp_path / "out"))
    assert not result["check_pass"]
    assert [(e["file"], e["message"]) for e in result["errors"]] == [("val.txt", "the split is empty; list pairs in it or enable CheckDataset.split")]


def test_ray_path_finds_the_same(tmp_path, ray_local):
    root = broken_dataset(tmp_path / "ds")
    on_ray = pair_checker(load_config(None, ["Ray.predict_batch_size=2"]), min_samples=0)  # 2 pairs a task: several tasks
    assert_problems(check_dataset(str(root), str(tmp_path / "out"), on_ray))
    clean = make_dataset(tmp_path / "clean")
    local = check_dataset(str(clean), str(tmp_path / "o1"))
    remote = check_dataset(str(clean), str(tmp_path / "o2"), on_ray)
    assert local["analysis"] == remote["analysis"] and local["attributes"] == remote["attributes"]


def upload(root, bucket, prefix):
    for path in root.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"s3://{bucket}/{prefix}/{path.relative_to(root).as_posix()}", path.read_bytes())
    return f"s3://{bucket}/{prefix}"


def test_dataset_on_s3_checks_like_local(tmp_path, s3_bucket, ray_local):
    clean = make_dataset(tmp_path / "ds")
    uri = upload(clean, s3_bucket, "camvid-like")
    local = check_dataset(str(clean), str(tmp_path / "local"))
    for where, check_pairs in (("local", check_locally), ("ray", pair_checker(load_config(None, []), min_samples=0))):
        remote = check_dataset(uri, str(tmp_path / f"s3-{where}"), check_pairs)
        assert remote["check_pass"] and remote["analysis"] == local["analysis"]
        assert remote["attributes"]["class_names"] == ["c0", "c1", "c2"]
    broken = upload(broken_dataset(tmp_path / "bad"), s3_bucket, "broken")
    assert_problems(check_dataset(broken, str(tmp_path / "s3-bad")))


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset folder .* does not exist; set Global.dataset_dir"):
        check_dataset(str(tmp_path / "nope"), str(tmp_path / "out"))


def test_palette_labels_read_as_class_ids():
    img = Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8), mode="P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    np.testing.assert_array_equal(decode_label(buf.getvalue()), [[0, 1], [2, 255]])


# ---- LabelMe ----------------------------------------------------------------------------------

def labelme_doc(image_path, shapes, h=40, w=60):
    return {"imagePath": image_path, "imageHeight": h, "imageWidth": w, "imageData": None, "shapes": shapes}


def test_labelme_shapes_rasterize_in_order():
    doc = labelme_doc("x.jpg", [
        {"label": "road", "shape_type": "rectangle", "points": [[0, 20], [59, 39]]},
        {"label": "car", "shape_type": "polygon", "points": [[10, 25], [30, 25], [30, 35], [10, 35]]},
        {"label": "sign", "shape_type": "circle", "points": [[50, 10], [55, 10]]},
    ])
    label = rasterize_labelme(doc, {"_background_": 0, "car": 1, "road": 2, "sign": 3}, "x.json")
    assert label[5, 5] == 0 and label[38, 50] == 2 and label[30, 20] == 1 and label[10, 50] == 3
    assert label[10, 44] == 0  # outside the circle (radius 5)


def test_labelme_conversion_round_trip_and_failures(tmp_path):
    root = tmp_path / "lm"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name in ("a", "b", "c", "d"):
        (root / "images" / f"{name}.jpg").write_bytes(jpeg_bytes(random_image(40, 60)))
    docs = {
        "a": labelme_doc("..\\images\\a.jpg", [{"label": "car", "shape_type": "polygon", "points": [[0, 0], [20, 0], [20, 20], [0, 20]]}]),
        "b": labelme_doc("../images/b.jpg", [{"label": "road", "shape_type": "rectangle", "points": [[0, 30], [59, 39]]}]),
        "c": labelme_doc("../images/c.jpg", [{"label": "car", "shape_type": "line", "points": [[0, 0], [5, 5]]}]),
        "d": labelme_doc("../images/nothere.jpg", [{"label": "car", "shape_type": "polygon", "points": [[0, 0], [5, 0], [5, 5]]}]),
    }
    for name, doc in docs.items():
        (root / "annotations" / f"{name}.json").write_text(json.dumps(doc))
    (root / "annotations" / "broken.json").write_text("{not json")

    pairs, problems = convert_labelme(str(root))
    assert pairs == 3  # a, b and d (whose imagePath is wrong but images/d.jpg exists)
    messages = {p.file: p.message for p in problems}
    assert "shape 0 ('car', line): shape type 'line' has no area" in messages["annotations/c.json"]
    assert "not a readable LabelMe JSON file" in messages["annotations/broken.json"]
    assert read_class_names(str(root)) == ["_background_", "car", "road"]
    assert (root / "train.txt").read_text().splitlines() == [
        "images/a.jpg annotations/a.png", "images/b.jpg annotations/b.png", "images/d.jpg annotations/d.png"]
    a = decode_label((root / "annotations" / "a.png").read_bytes())
    assert a[10, 10] == 1 and a[30, 50] == 0
    assert Image.open(root / "annotations" / "a.png").mode == "P"
    b = decode_label((root / "annotations" / "b.png").read_bytes())
    assert b[35, 30] == 2 and b[10, 10] == 0

    cfg = load_config(None, [f"Global.dataset_dir={root}", f"Global.output={tmp_path / 'out'}", "CheckDataset.split.enable=true",
                             "CheckDataset.split.train_percent=67", "CheckDataset.split.val_percent=33"])
    result = check_from_config(cfg)
    assert result["check_pass"], result["errors"]
    assert (result["attributes"]["train_samples"], result["attributes"]["val_samples"]) == (2, 1)


def test_labelme_unknown_label_against_labels_txt(tmp_path):
    root = tmp_path / "lm"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "images" / "a.jpg").write_bytes(jpeg_bytes(random_image(40, 60)))
    (root / "annotations" / "a.json").write_text(json.dumps(labelme_doc("../images/a.jpg", [
        {"label": "tram", "shape_type": "polygon", "points": [[0, 0], [5, 0], [5, 5]]}])))
    (root / "labels.txt").write_text("background\ncar\n")
    pairs, problems = convert_labelme(str(root))
    assert pairs == 0 and "labels ['tram'] are not in labels.txt" in problems[0].message


# ---- VOC ---------------------------------------------------------------------------------------

def test_voc_conversion_then_check_passes(tmp_path):
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        (root / "JPEGImages" / f"{i:04d}.jpg").write_bytes(jpeg_bytes(random_image(30, 40, seed=i)))
        img = Image.fromarray(rng.choice([0, 1, 15, 255], (30, 40)).astype(np.uint8), mode="P")
        img.putpalette([v % 256 for v in range(768)])
        img.save(root / "SegmentationClass" / f"{i:04d}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("0000\n0001\n0002\n0009\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("0003\n")
    pairs, problems = convert_voc(str(root))
    assert pairs == 4
    assert [(p.file, p.line) for p in problems] == [("ImageSets/Segmentation/train.txt", 4)]
    assert read_class_names(str(root)) == VOC_CLASSES
    result = check_dataset(str(root), str(tmp_path / "out"))
    assert result["check_pass"], result["errors"]
    assert result["attributes"]["num_classes"] == 21 and result["attributes"]["val_samples"] == 1


# ---- split -------------------------------------------------------------------------------------

def test_split_proportions_backups_and_seed(tmp_path):
    root = make_dataset(tmp_path / "ds", n_train=7, n_val=3)
    old_train, old_val = (root / "train.txt").read_text(), (root / "val.txt").read_text()
    assert split_dataset(str(root), 80, 20, seed=1) == (8, 2)
    assert (root / "train.txt.bak").read_text() == old_train and (root / "val.txt.bak").read_text() == old_val
    new = set((root / "train.txt").read_text().splitlines()) | set((root / "val.txt").read_text().splitlines())
    assert new == set(old_train.splitlines()) | set(old_val.splitlines())
    first = (root / "val.txt").read_text()
    split_dataset(str(root), 80, 20, seed=1)
    assert (root / "val.txt").read_text() == first  # the same seed, the same split
    vals = set()
    for seed in range(2, 6):
        split_dataset(str(root), 80, 20, seed=seed)
        vals.add((root / "val.txt").read_text())
    assert len(vals) > 1


@pytest.mark.parametrize("train,val,match", [(70, 20, "must be 100"), (None, 20, "needs both"), (100, 0, "between 1 and 99")])
def test_split_percent_errors(tmp_path, train, val, match):
    root = make_dataset(tmp_path / "ds")
    with pytest.raises(ValueError, match=match):
        split_dataset(str(root), train, val)
    assert not os.path.exists(root / "train.txt.bak")
