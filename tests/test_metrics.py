"""Metrics against a direct numpy computation on random label maps, with ignore pixels and absent classes."""

import json

import numpy as np
import pytest

from conftest import CLASS_NAMES, make_dataset, write_label
from raysegment import create_model
from raysegment.batch import evaluate
from raysegment.config import load_config
from raysegment.data.dataset import decode_label
from raysegment.data.metrics import ConfusionMatrix


def direct_metrics(preds, labels, c, ignore=255):
    """Per-class counts straight from the masks, without a confusion matrix."""
    pred = np.concatenate([p.ravel() for p in preds])
    label = np.concatenate([lb.ravel() for lb in labels])
    keep = label != ignore
    pred, label = pred[keep], label[keep]
    iou, acc, dice = [], [], []
    for k in range(c):
        tp = np.sum((pred == k) & (label == k))
        n_pred, n_label = np.sum(pred == k), np.sum(label == k)
        union = n_pred + n_label - tp
        iou.append(tp / union if union else np.nan)
        acc.append(tp / n_label if n_label else np.nan)
        dice.append(2 * tp / (n_pred + n_label) if n_pred + n_label else np.nan)
    po = np.mean(pred == label)
    pe = sum(np.sum(pred == k) * np.sum(label == k) for k in range(c)) / label.size**2
    return {"mIoU": np.nanmean(iou), "class_IoU": iou, "class_accuracy": acc, "mDice": np.nanmean(dice),
            "pixel_accuracy": po, "kappa": (po - pe) / (1 - pe), "mean_accuracy": np.nanmean(acc)}


def test_matches_direct_computation_over_batches():
    rng = np.random.default_rng(0)
    c = 6
    preds, labels = [], []
    cm = ConfusionMatrix(c)
    for _ in range(5):
        label = rng.integers(0, 4, (20, 30))  # classes 4 and 5 never labelled
        label[rng.random((20, 30)) < 0.2] = 255
        pred = np.where(rng.random((20, 30)) < 0.6, np.where(label == 255, 0, label), rng.integers(0, 5, (20, 30)))
        # class 4 is only ever predicted (IoU 0); class 5 appears nowhere (IoU undefined)
        preds.append(pred)
        labels.append(label)
        cm.update(pred, label)
    got, want = cm.metrics(), direct_metrics(preds, labels, c)
    for key in ("mIoU", "mDice", "pixel_accuracy", "kappa", "mean_accuracy"):
        assert got[key] == pytest.approx(want[key]), key
    for key in ("class_IoU", "class_accuracy"):
        for g, w in zip(got[key], want[key]):
            assert (g is None and np.isnan(w)) or g == pytest.approx(w), key
    assert got["class_IoU"][4] == 0.0 and got["class_IoU"][5] is None
    assert got["labelled_pixels"] == sum(int(np.sum(lb != 255)) for lb in labels)


def test_merge_equals_one_matrix_and_perfect_prediction():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 3, (10, 10))
    a, b = ConfusionMatrix(3).update(label[:5], label[:5]), ConfusionMatrix(3).update(label[5:], label[5:])
    whole = ConfusionMatrix(3).update(label, label)
    np.testing.assert_array_equal(a.merge(b).matrix, whole.matrix)
    m = whole.metrics(["a", "b", "c"])
    assert m["mIoU"] == 1.0 and m["pixel_accuracy"] == 1.0 and m["kappa"] == 1.0 and m["class_names"] == ["a", "b", "c"]


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="label values must be in 0..2 or 255"):
        ConfusionMatrix(3).update(np.zeros(4), np.array([0, 1, 3, 255]))
    with pytest.raises(ValueError, match="predicted class 7"):
        ConfusionMatrix(3).update(np.array([7, 0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="pixels"):
        ConfusionMatrix(3).update(np.zeros(3), np.zeros(4))


@pytest.mark.slow
def test_evaluate_on_ray_matches_create_model(tmp_path, inference_dir, ray_local):
    root = make_dataset(tmp_path / "ds", n_train=2, n_val=5, num_classes=3)
    (root / "labels.txt").write_text("".join(f"{n}\n" for n in CLASS_NAMES))
    # one corrupt image: recorded as an error, the rest still evaluated
    (root / "images" / "bad.jpg").write_bytes(b"broken")
    write_label(root / "annotations" / "bad.png", np.zeros((32, 48), np.uint8))
    with open(root / "val.txt", "a") as f:
        f.write("images/bad.jpg annotations/bad.png\n")

    cfg = load_config(None, [f"Global.dataset_dir={root}", f"Global.output={tmp_path / 'out'}",
                             f"Evaluate.weight_path={inference_dir}", "Ray.predict_batch_size=2"])
    result = evaluate(cfg)
    assert json.loads((tmp_path / "out" / "evaluate_result.json").read_text()) == result
    assert result["evaluated_samples"] == 5 and result["listed_samples"] == 6
    assert [(e["file"], e["line"]) for e in result["errors"]] == [("val.txt", 6)]
    assert "bad.jpg is not a decodable image" in result["errors"][0]["message"]

    model = create_model(model_dir=inference_dir)
    expected = ConfusionMatrix(3)
    for line in (root / "val.txt").read_text().splitlines()[:5]:
        image, label = line.split()
        (res,) = model.predict(str(root / image))
        expected.update(res["pred"][0], decode_label((root / label).read_bytes()))
    assert result["confusion_matrix"] == expected.matrix.tolist()
    assert result["metrics"]["mIoU"] == pytest.approx(expected.metrics()["mIoU"])
    assert result["metrics"]["class_names"] == CLASS_NAMES


def test_evaluate_refuses_a_class_count_mismatch(tmp_path, inference_dir, ray_local):
    root = make_dataset(tmp_path / "ds", num_classes=5)
    cfg = load_config(None, [f"Global.dataset_dir={root}", f"Evaluate.weight_path={inference_dir}"])
    with pytest.raises(ValueError, match="the dataset has 5 classes .* predicts 3"):
        evaluate(cfg)


@pytest.mark.parametrize("override,match", [("Ray.cpus_per_actor=3", r"one process of 3 CPUs \(Ray.cpus_per_actor\) fits on no node"),
                                             ("Global.device=gpu", r"1 GPUs \(Ray.gpus_per_actor\) fits on no node of this cluster \(1 node of 2 CPUs, 0 GPUs\)"),
                                             ("Ray.gpus_per_actor=1", "Global.device is cpu but Ray.gpus_per_actor is 1")])
def test_evaluate_refuses_an_actor_pool_that_cannot_run(tmp_path, inference_dir, ray_local, override, match):
    root = make_dataset(tmp_path / "ds")
    cfg = load_config(None, [f"Global.dataset_dir={root}", f"Evaluate.weight_path={inference_dir}", override])
    with pytest.raises(ValueError, match=match):
        evaluate(cfg)


@pytest.mark.parametrize("interval,calls", [(2, 3), (10, 1)])
def test_evaluate_reports_progress_every_log_interval_batches(tmp_path, inference_dir, ray_local, interval, calls):
    root = make_dataset(tmp_path / "ds", n_train=2, n_val=5)
    cfg = load_config(None, [f"Global.dataset_dir={root}", f"Global.output={tmp_path / 'out'}", f"Evaluate.weight_path={inference_dir}",
                             "Ray.predict_batch_size=1", f"Evaluate.log_interval={interval}"])
    seen = []
    evaluate(cfg, progress=lambda done, total, seconds: seen.append((done, total)))
    assert len(seen) == calls and seen[-1] == (5, 5)  # 5 batches of 1: after the 2nd, the 4th, and at the end
