"""Training: recipe pieces on tiny arrays, the plain loop, and Ray Train with 2 gloo workers."""

import json
import os
import re
import threading
import time

import cv2
import numpy as np
import paddle
import pytest

import raysegment
from conftest import make_dataset
from raysegment.config import load_config
from raysegment.data.augment import AugmentSpec, augment_pair
from raysegment.train import lr_at, train
from raysegment.train.data import median_frequency_weights, split_rows
from raysegment.train.losses import cross_entropy, lovasz_softmax, ohem_cross_entropy, training_loss
from raysegment.train.ray_train import WHOLE_MARKER, fit


def tiny_cfg(root, out, *overrides):
    return load_config(None, [
        "Global.model=PP-LiteSeg-T", f"Global.dataset_dir={root}", f"Global.output={out}", "Train.num_classes=3",
        "Train.epochs_iters=4", "Train.batch_size=2", "Train.crop_size=[32,32]", "Train.eval_interval=2",
        "Train.log_interval=1", "Train.ohem_min_kept=100", "Ray.cpus_per_worker=0.5", *overrides])


def test_lr_schedule():
    assert lr_at(0, 0.1, 100, warmup=10) == pytest.approx(0.01)
    assert lr_at(9, 0.1, 100, warmup=10) == pytest.approx(0.1)
    assert lr_at(10, 0.1, 100, warmup=10) == pytest.approx(0.1)
    assert lr_at(55, 0.1, 100, warmup=10, power=1.0) == pytest.approx(0.05)
    assert lr_at(100, 0.1, 100) == 0.0


def test_augmentation_keeps_labels_exact_and_aligned():
    rng = np.random.default_rng(0)
    label = np.kron(rng.integers(0, 4, (6, 8)), np.ones((16, 16), np.int64)).astype(np.uint8)  # 96 x 128 blocks
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
    img = colours[label]
    # mean 0, std 1/255: x holds the pixel values. Scale 0.5 makes the 128 x 96 image 64 x 48, smaller
    # than the 80 x 64 crop, so every draw pads; the other spec draws scales from 0.5 to 2.0.
    padded = AugmentSpec(crop_size=(80, 64), min_scale=0.5, max_scale=0.5, distort=0.0, mean=(0, 0, 0), std=(1 / 255,) * 3)
    mixed = AugmentSpec(crop_size=(80, 64), min_scale=0.5, max_scale=2.0, scale_step=0.25, distort=0.0, mean=(0, 0, 0), std=(1 / 255,) * 3)
    pads_seen = 0
    for spec in [padded] * 4 + [mixed] * 10:
        x, y = augment_pair(img, label, spec, rng)
        assert x.shape == (3, 64, 80) and y.shape == (64, 80) and y.dtype == np.int64
        assert set(np.unique(y)) <= {0, 1, 2, 3, 255}  # nearest neighbour: no new label values
        rgb = x.transpose(1, 2, 0)
        labelled = y != 255
        nearest = np.argmin(((rgb[:, :, None, :] - colours[None, None].astype(np.float32)) ** 2).sum(-1), axis=-1)
        # bilinear image edges blur; nearly every labelled pixel must still show its class's colour
        assert np.mean(nearest[labelled] == y[labelled]) > 0.9
        # padding: the label is 255 (ignore) exactly where the image is mid-grey 128 (127.5 rounded)
        pad = ~labelled
        pads_seen += bool(pad.any())
        np.testing.assert_array_equal(x[:, pad], 128.0)
        assert pad.sum() == 64 * 80 - 48 * 64 or spec is mixed
    assert pads_seen >= 4


def test_ohem_keeps_hard_pixels():
    paddle.seed(0)
    logits = paddle.randn([2, 3, 8, 8])
    label = paddle.randint(0, 3, [2, 8, 8])
    # with min_kept at least every pixel and thresh 1, OHEM keeps everything: plain cross-entropy
    assert float(ohem_cross_entropy(logits, label, thresh=1.0, min_kept=128)) == pytest.approx(float(cross_entropy(logits, label)), rel=1e-5)
    pixel = paddle.nn.functional.cross_entropy(logits, label, axis=1, reduction="none").numpy().ravel()
    prob = np.exp(-pixel)
    hard = pixel[prob < 0.7]
    assert float(ohem_cross_entropy(logits, label, thresh=0.7, min_kept=0)) == pytest.approx(hard.mean(), rel=1e-5)
    k = 100
    threshold = max(np.sort(prob)[k - 1], 0.7)
    assert float(ohem_cross_entropy(logits, label, thresh=0.7, min_kept=k)) == pytest.approx(pixel[prob < threshold].mean(), rel=1e-5)


def test_class_weights_weigh_each_pixel_by_its_true_class():
    paddle.seed(0)
    logits = paddle.randn([2, 3, 8, 8])
    label = paddle.randint(0, 3, [2, 8, 8])
    pixel = paddle.nn.functional.cross_entropy(logits, label, axis=1, reduction="none").numpy().ravel()
    y = label.numpy().ravel()
    only_class_0 = paddle.to_tensor([1.0, 0.0, 0.0])
    assert float(cross_entropy(logits, label, weight=only_class_0)) == pytest.approx(pixel[y == 0].mean(), rel=1e-5)
    w = np.array([0.5, 2.0, 4.0], np.float32)
    kept = np.exp(-pixel) < 0.7  # OHEM picks the pixels by probability, whatever the weights
    expected = (w[y] * pixel)[kept].sum() / w[y][kept].sum()
    assert float(ohem_cross_entropy(logits, label, thresh=0.7, min_kept=0, weight=paddle.to_tensor(w))) == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(pixel[kept].mean(), rel=1e-3)  # the weights do change the loss
    uniform = paddle.to_tensor([3.0, 3.0, 3.0])
    assert float(ohem_cross_entropy(logits, label, min_kept=100, weight=uniform)) == pytest.approx(float(ohem_cross_entropy(logits, label, min_kept=100)), rel=1e-5)


def test_median_frequency_weights_from_the_train_labels(tmp_path):
    from conftest import write_label

    # per-class pixels over the labelled pixels of the labels containing the class:
    # c0 16/20 = 0.8, c1 6/15 = 0.4, c2 3/5 = 0.6 (255 is not counted), c3 in no label
    labels = [np.array([0] * 6 + [1] * 4), np.array([0] * 10), np.array([1] * 2 + [2] * 3 + [255] * 5)]
    rows = []
    for i, values in enumerate(labels):
        write_label(tmp_path / f"{i}.png", values.reshape(2, 5).astype(np.uint8))
        rows.append({"image": "unused", "label": str(tmp_path / f"{i}.png")})
    assert median_frequency_weights(rows, 4) == pytest.approx([0.75, 1.5, 1.0, 0.0])  # median 0.6 / freq


def test_median_frequency_class_weights_are_computed_once_and_recorded(tmp_path):
    root = make_dataset(tmp_path / "ds", n_train=4, n_val=1)
    out = tmp_path / "out"
    train(tiny_cfg(root, out, "Train.epochs_iters=1", "Train.class_weights=median_frequency"))
    expected = median_frequency_weights(split_rows(str(root), "train"), 3)
    assert load_config(str(out / "config.yaml")).Train.class_weights == pytest.approx(expected)
    assert "class weights: c0 %g, c1 %g, c2 %g" % tuple(expected) in (out / "train.log").read_text()


@pytest.mark.slow
def test_eval_target_size_resizes_the_evaluations_and_is_saved_with_the_model(tmp_path):
    root = make_dataset(tmp_path / "ds", n_train=4, n_val=2)  # 48 x 32 images
    out = tmp_path / "out"
    result = train(tiny_cfg(root, out, "Train.epochs_iters=2", "Train.eval_target_size=[96,64]"))
    image = np.zeros((32, 48, 3), np.uint8)
    for folder in (out / "iter_2", out / "best_model", out / "best_model" / "inference"):
        predictor = raysegment.infer.Predictor.load(str(folder))
        assert predictor.preprocess(image).shape == (3, 64, 96), folder  # the network sees 2x the image
        assert predictor.predict([image])[0].shape == (32, 48)  # the mask comes back at the image's size
    # the evaluation during training is what the saved checkpoint scores on val (the exported
    # folder's engines may break near-ties of this untrained model differently)
    from raysegment.data.dataset import read_pair
    from raysegment.data.metrics import ConfusionMatrix

    cm = ConfusionMatrix(3)
    for row in split_rows(str(root), "val"):
        img, label = read_pair(row["image"], row["label"])
        cm.update(raysegment.infer.Predictor.load(str(out / "best_model")).predict([img])[0], label)
    assert cm.metrics()["mIoU"] == pytest.approx(result["best_metrics"]["mIoU"], abs=1e-6)


@pytest.mark.slow
def test_plain_loop_writes_paddlex_outputs_and_resumes(tmp_path):
    root = make_dataset(tmp_path / "ds", n_train=4, n_val=2)
    out = tmp_path / "out"
    result = train(tiny_cfg(root, out, "Train.keep_checkpoints=1", "Train.lovasz_weight=0.25"))
    assert result["done_flag"] and result["iters"] == 4 and result["best_iter"] in (2, 4)
    assert json.loads((out / "train_result.json").read_text()) == result
    assert sorted(p for p in os.listdir(out) if p.startswith("iter_")) == ["iter_4"]  # keep_checkpoints=1
    log = (out / "train.log").read_text()
    assert "iter 4/4 loss" in log and "images/s" in log and "val mIoU" in log
    assert re.search(r"iter 4 class IoU c0 (\d\.\d{4}|-), c1 (\d\.\d{4}|-), c2 (\d\.\d{4}|-)$", log, re.M)
    saved = load_config(str(out / "config.yaml")).Train
    assert saved.epochs_iters == 4 and saved.lovasz_weight == 0.25
    best = out / "best_model"
    assert {"model.pdparams", "model.pdopt", "inference.yml", "train_state.json"} <= set(os.listdir(best))
    model = raysegment.create_model("PP-LiteSeg-T", model_dir=str(best / "inference"))
    assert model.predictor.class_names == ["c0", "c1", "c2"]
    assert len(list(model.predict(str(root / "images")))) == 6

    # curves: TensorBoard scalars beside train.log, the PNG plot, and the points in the checkpoint state
    assert {"train/loss", "train/lr", "val/mIoU"} <= set(event_scalars(out))
    assert [step for step, _ in event_scalars(out)["train/loss"]] == [1, 2, 3, 4]
    assert cv2.imread(str(out / "training_curves.png")) is not None
    curves = json.loads((out / "iter_4" / "train_state.json").read_text())["curves"]
    assert [p[0] for p in curves["loss"]] == [1, 2, 3, 4] and [p[0] for p in curves["mIoU"]][:1] == [2]

    resumed = train(tiny_cfg(root, tmp_path / "out2", f"Train.resume_path={out / 'iter_4'}", "Train.epochs_iters=6"))
    assert resumed["iters"] == 6
    log2 = (tmp_path / "out2" / "train.log").read_text()
    assert f"resumed from {out / 'iter_4'} at iteration 4" in log2
    assert "iter 5/6" in log2 and "iter 4/6" not in log2  # no iteration done twice
    curves = json.loads((tmp_path / "out2" / "iter_6" / "train_state.json").read_text())["curves"]
    assert [p[0] for p in curves["loss"]] == [1, 2, 3, 4, 5, 6]  # one whole curve across the two pieces
    assert [step for step, _ in event_scalars(tmp_path / "out2")["train/loss"]] == [5, 6]


def event_scalars(folder):
    """{tag: [(step, value)]} read back from the TensorBoard event files in `folder` (TFRecord
    framing: length, its CRC, the Event proto, its CRC)."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars = {}
    for name in sorted(os.listdir(folder)):
        if not name.startswith("events.out.tfevents"):
            continue
        data = (folder / name).read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_pretrained_weights_replace_the_head_and_say_so(tmp_path, checkpoint_dir):
    root = make_dataset(tmp_path / "ds", n_train=2, n_val=1, num_classes=5)
    cfg = tiny_cfg(root, tmp_path / "out", "Train.num_classes=5", "Train.epochs_iters=1",
                   f"Train.pretrain_weight_path={checkpoint_dir}/model.pdparams")
    train(cfg)
    assert "classifier replaced: seg_heads.0.conv_out.weight" in (tmp_path / "out" / "train.log").read_text()


@pytest.mark.parametrize("overrides,match", [
    (["Train.num_classes=4"], "Train.num_classes is 4 but .*labels.txt names 3 classes"),
    (["Train.batch_size=8"], "the train split has 4 pairs, fewer than one global batch"),
    (["Global.dataset_dir=/no/such/dataset"], "missing list file"),
    (["Train.resume_path=/no/such/ckpt"], "is not a training checkpoint"),
    (["Train.class_weights=[1,2]"], "Train.class_weights has 2 values but Train.num_classes is 3"),
    (["Global.model=MaskFormer_tiny", "Train.class_weights=[1,1,1]"], "Train.class_weights: MaskFormer_tiny trains with its own"),
    (["Global.model=MaskFormer_tiny", "Train.lovasz_weight=0.25"], "Train.lovasz_weight: MaskFormer_tiny trains with its own.*leave it unset"),
])
def test_bad_training_configs_fail_before_any_worker(tmp_path, overrides, match):
    root = make_dataset(tmp_path / "ds", n_train=4, n_val=1)
    with pytest.raises(ValueError, match=match):
        fit(tiny_cfg(root, tmp_path / "out", *overrides))
    assert not (tmp_path / "out" / "ray_results").exists()


def decomposable_cfg(root, out, workers, batch):
    """No random augmentation, frozen BatchNorm and plain cross-entropy: the loss decomposes over
    samples, so 2 workers x 2 images must equal 1 worker x 4 images."""
    return tiny_cfg(root, out, f"Ray.num_workers={workers}", f"Train.batch_size={batch}", "Train.epochs_iters=3",
                    "Train.eval_interval=3", "Train.crop_size=[48,32]", "Train.min_scale=1", "Train.max_scale=1",
                    "Train.flip=false", "Train.distort=0", "Train.freeze_bn=true", "Train.loss=ce", "Train.learning_rate=0.05")


@pytest.mark.slow
def test_two_gloo_workers_match_one_worker_on_the_union(tmp_path, ray_local):
    root = make_dataset(tmp_path / "ds", n_train=4, n_val=1)  # one global batch per iteration
    two = fit(decomposable_cfg(root, tmp_path / "two", workers=2, batch=2))
    fit(decomposable_cfg(root, tmp_path / "one", workers=1, batch=4))
    assert two["workers"] == 2 and two["workers_in_sync"] is True
    link = tmp_path / "two" / "iter_3"  # each checkpoint once on disk: the folder is Ray Train's copy
    assert link.is_symlink() and link.resolve() == (tmp_path / "two" / "ray_results" / "ray_train" / "iter_3").resolve()
    a = paddle.load(str(tmp_path / "two" / "iter_3" / "model.pdparams"))
    b = paddle.load(str(tmp_path / "one" / "iter_3" / "model.pdparams"))
    init = raysegment.build_model("PP-LiteSeg-T", 3).state_dict()
    moved = 0
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-4, atol=1e-6, err_msg=key)
        moved += not np.allclose(a[key].numpy(), init[key].numpy())
    assert moved > 100  # training really changed the weights


def train_worker_pids():
    """PIDs of live Ray Train worker processes, found by their process title (ray::RayTrainWorker...)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"RayTrainWorker" in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


@pytest.mark.slow
def test_killed_worker_resumes_to_the_final_iteration(tmp_path, ray_local):
    root = make_dataset(tmp_path / "ds", n_train=4, n_val=1, size=(96, 128))
    out = tmp_path / "out"
    cfg = tiny_cfg(root, out, "Ray.num_workers=1", "Train.epochs_iters=15", "Train.eval_interval=5", "Train.crop_size=[96,96]",
                   "Ray.max_failures=2", "Train.keep_checkpoints=10")
    killed = []

    def kill_after_first_checkpoint():
        # the worst moment: the iteration-5 checkpoint is uploaded whole (report() has returned), but
        # Ray's controller registers it only at its next poll of the workers (every 2 s)
        uploaded = out / "ray_results" / "ray_train" / "iter_5" / WHOLE_MARKER
        deadline = time.time() + 240
        while time.time() < deadline and not uploaded.exists():
            time.sleep(0.02)
        for pid in train_worker_pids():
            os.kill(pid, 9)
            killed.append(pid)

    killer = threading.Thread(target=kill_after_first_checkpoint)
    killer.start()
    result = fit(cfg)
    killer.join()
    assert killed, "no training worker was found to kill"
    assert result["iters"] == 15 and result["done_flag"]
    log = (out / "train.log").read_text()
    match = re.search(r"resumed from \S+ at iteration (\d+)", log)
    assert match, log
    resumed_at, after = int(match.group(1)), log[match.end():]
    assert resumed_at >= 5 and f"iter {resumed_at + 1}/15 loss" in after and "iter 15/15" in after
    redone = [int(n) for n in re.findall(r"iter (\d+)/15 loss", after) if int(n) <= resumed_at]
    assert redone == [], f"iterations done twice: {redone}"
    curves = json.loads((out / "iter_15" / "train_state.json").read_text())["curves"]
    assert [p[0] for p in curves["loss"]] == list(range(1, 16))  # one whole curve, each iteration once


def test_optimizer_state_round_trips_between_model_instances():
    from raysegment.train.loop import optimizer_state_by_structure

    a = raysegment.build_model("PP-LiteSeg-T", 3)
    b = raysegment.build_model("PP-LiteSeg-T", 3)  # same structure, other generated parameter names
    opt_a = paddle.optimizer.Momentum(0.1, parameters=a.parameters())
    a(paddle.rand([1, 3, 32, 32]))[0].mean().backward()
    opt_a.step()
    saved = optimizer_state_by_structure(opt_a.state_dict(), a)
    assert "backbone.features.0.conv.weight_velocity_0" in saved
    opt_b = paddle.optimizer.Momentum(0.1, parameters=b.parameters())
    opt_b.set_state_dict(optimizer_state_by_structure(saved, b, to_structure=False))
    pa = dict(a.named_parameters())["seg_heads.0.conv_out.weight"]
    pb = dict(b.named_parameters())["seg_heads.0.conv_out.weight"]
    np.testing.assert_array_equal(opt_a.state_dict()[f"{pa.name}_velocity_0"].numpy(), opt_b.state_dict()[f"{pb.name}_velocity_0"].numpy())


@pytest.mark.slow
def test_backbone_only_pretrained_weights(tmp_path):
    root = make_dataset(tmp_path / "ds", n_train=2, n_val=1)
    donor = raysegment.build_model("PP-LiteSeg-T", 3)
    path = str(tmp_path / "stdc1.pdparams")
    paddle.save(donor.backbone.state_dict(), path)  # keys without 'backbone.', as ImageNet backbones ship
    cfg = tiny_cfg(root, tmp_path / "out", "Train.epochs_iters=1", f"Train.pretrain_weight_path={path}")
    train(cfg)
    assert f"pretrained weights {path} loaded: backbone" in (tmp_path / "out" / "train.log").read_text()
    bad = str(tmp_path / "bad.pdparams")
    paddle.save({"not.a.key": paddle.zeros([1])}, bad)
    with pytest.raises(raysegment.models.WeightsError, match="as backbone weights"):
        train(tiny_cfg(root, tmp_path / "out2", "Train.epochs_iters=1", f"Train.pretrain_weight_path={bad}"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["OCRNet_HRNet-W18", "MaskFormer_tiny"])
def test_two_gloo_workers_train_models_with_their_own_losses(tmp_path, ray_local, name):
    """OCRNet's auxiliary head (2 logits, coefficients 1 and 0.4) and MaskFormer's set loss (a dict
    of per-layer predictions) through paddle.DataParallel on 2 Ray Train workers."""
    root = make_dataset(tmp_path / "ds", n_train=4, n_val=1)
    cfg = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", f"{name}.yaml"), [
        f"Global.dataset_dir={root}", f"Global.output={tmp_path / 'out'}", "Train.num_classes=3", "Train.epochs_iters=2",
        "Train.batch_size=1", "Train.crop_size=[32,32]", "Train.eval_interval=2", "Train.warmup_steps=0",
        "Ray.num_workers=2", "Ray.cpus_per_worker=0.5"])
    result = fit(cfg)
    assert result["workers"] == 2 and result["workers_in_sync"] is True
    assert os.path.isfile(tmp_path / "out" / "best_model" / "inference" / "inference.json")


class TwoHeads(paddle.nn.Layer):
    """A model whose published loss coefficients are OCRNet's (1 and 0.4), with random logits for both heads."""

    loss_coefs = (1.0, 0.4)

    @staticmethod
    def logits_and_label():
        paddle.seed(0)
        return paddle.randn([1, 3, 8, 8]), paddle.randn([1, 3, 8, 8]), paddle.randint(0, 3, [1, 8, 8])


def test_training_loss_uses_the_model_coefficients_and_checks_their_count():
    a, b, label = TwoHeads.logits_and_label()
    expected = float(cross_entropy(a, label)) + 0.4 * float(cross_entropy(b, label))
    assert float(training_loss(TwoHeads(), [a, b], label, kind="ce")) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="Train.loss_coefs has 3 values but the model returns 2 logits"):
        training_loss(TwoHeads(), [a, b], label, kind="ce", coefs=[1.0, 1.0, 1.0])


def test_lovasz_softmax_is_the_mean_jaccard_loss_on_hard_predictions():
    """On one-hot probabilities the Lovász extension equals the set function: the mean over the
    classes present in the label of 1 - IoU of the predicted mask; ignored pixels count nowhere."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (2, 16, 16))
    label[label == 3] = 2  # class 3 absent from the label: it is not averaged in
    pred = np.where(rng.random(label.shape) < 0.7, label, rng.integers(0, 4, label.shape))
    label[0, :4] = 255
    logits = 50.0 * np.eye(4, dtype="float32")[pred].transpose(0, 3, 1, 2)
    labelled = label != 255
    expected = np.mean([1 - ((pred == c) & (label == c)).sum() / (((pred == c) | (label == c)) & labelled).sum() for c in range(3)])
    loss = float(lovasz_softmax(paddle.to_tensor(logits), paddle.to_tensor(label)))
    assert loss == pytest.approx(expected, abs=1e-5)
    assert float(lovasz_softmax(paddle.to_tensor(logits), paddle.to_tensor(np.full_like(label, 255)))) == 0.0


def test_lovasz_softmax_gradient_raises_iou():
    """A few gradient steps on the logits alone lower the Lovász loss and raise the hard IoU."""
    rng = np.random.default_rng(1)
    label = paddle.to_tensor(rng.integers(0, 3, (1, 12, 12)))
    logits = paddle.to_tensor(rng.standard_normal((1, 3, 12, 12)).astype("float32"), stop_gradient=False)

    def miou():
        pred, lab = logits.argmax(1).numpy(), label.numpy()
        return np.mean([((pred == c) & (lab == c)).sum() / ((pred == c) | (lab == c)).sum() for c in range(3)])

    first_loss, first_miou = float(lovasz_softmax(logits, label)), miou()
    for _ in range(20):
        loss = lovasz_softmax(logits, label)
        loss.backward()
        with paddle.no_grad():
            logits.set_value(logits - 200.0 * logits.grad)
        logits.clear_gradient()
    assert float(lovasz_softmax(logits, label)) < first_loss - 0.2
    assert miou() > first_miou + 0.2


def test_lovasz_weight_adds_lovasz_to_the_main_head_only():
    a, b, label = TwoHeads.logits_and_label()
    plain = float(training_loss(TwoHeads(), [a, b], label, kind="ce"))
    mixed = float(training_loss(TwoHeads(), [a, b], label, kind="ce", lovasz_weight=0.25))
    assert mixed == pytest.approx(plain + 0.25 * float(lovasz_softmax(a, label)), rel=1e-5)


def test_maskformer_matching_pairs_queries_with_their_classes_and_rewards_the_right_masks():
    from raysegment.models.maskformer_loss import maskformer_loss, match, targets_from_labels

    label = np.zeros((1, 8, 8), np.int64)
    label[0, :, 4:] = 2  # classes 0 (left half) and 2 (right half) present, 1 absent
    label[0, 0, :] = 255
    label = paddle.to_tensor(label)
    num_classes, big = 3, 12.0
    left = np.where(np.arange(8)[None, :] < 4, big, -big) * np.ones((8, 1))
    # query 0: no object; query 1: class 2, right-half mask; query 2: class 0, left-half mask
    class_logits = np.full((1, 3, num_classes + 1), -big, np.float32)
    class_logits[0, 0, 3] = class_logits[0, 1, 2] = class_logits[0, 2, 0] = big
    masks = np.stack([np.full((8, 8), -big), -left, left])[None].astype(np.float32)
    targets = targets_from_labels(label, [8, 8])
    assert targets[0][0].numpy().tolist() == [0, 2]
    (q, t), = match(paddle.to_tensor(class_logits), paddle.to_tensor(masks), targets)
    assert dict(zip(q.tolist(), t.tolist())) == {2: 0, 1: 1}
    right = maskformer_loss([(paddle.to_tensor(class_logits), paddle.to_tensor(masks))], label, num_classes)
    swapped = masks[:, [0, 2, 1]]  # each class query now predicts the other half
    wrong = maskformer_loss([(paddle.to_tensor(class_logits), paddle.to_tensor(swapped))], label, num_classes)
    assert float(right) < 0.1 < float(wrong)


@pytest.mark.slow
def test_relative_paths_mean_the_drivers_working_directory(tmp_path, ray_local, monkeypatch):
    """Ray Train workers run in another directory; `-o Global.dataset_dir=ds` must still find ./ds."""
    make_dataset(tmp_path / "ds", n_train=4, n_val=1)
    monkeypatch.chdir(tmp_path)
    result = fit(tiny_cfg("ds", "out", "Ray.num_workers=1", "Train.epochs_iters=2", "Train.eval_interval=2"))
    assert result["workers"] == 1
    assert (tmp_path / "out" / "best_model" / "model.pdparams").is_file()


def test_pretrained_weights_from_an_exported_folder_or_a_checkpoint_folder(tmp_path):
    """The bundled model ships as an exported inference folder: training starts from it, with the
    train-only auxiliary heads (not in the traced graph) left as initialised and named."""
    from raysegment.infer import export_model, save_checkpoint
    from raysegment.infer.model_files import ModelFolderError
    from raysegment.train.loop import load_pretrained

    paddle.seed(1)
    donor = raysegment.build_model("PP-LiteSeg-T", 3)
    donor.eval()
    exported = export_model(donor, str(tmp_path / "exported"), "PP-LiteSeg-T", ["a", "b", "c"])
    paddle.seed(2)
    net = raysegment.build_model("PP-LiteSeg-T", 3)
    initial = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    said = load_pretrained(net, exported, net.classifier_prefixes)
    aux = [k for k in initial if k.startswith(("seg_heads.1.", "seg_heads.2."))]
    assert said == f"full model, {len(aux)} train-only weights not in the exported folder left as initialised: seg_heads.1, seg_heads.2"
    theirs = donor.state_dict()
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), initial[key] if key in aux else theirs[key].numpy(), err_msg=key)
    net.eval()
    x = paddle.to_tensor(np.random.RandomState(0).rand(1, 3, 64, 96).astype("float32"))
    np.testing.assert_array_equal(net(x)[0].numpy(), donor(x)[0].numpy())

    # another class count: the classifier is replaced, as with a .pdparams; and from a thread other
    # than the main one, as Ray Train calls it (Paddle's static loader needs static mode there too)
    other = raysegment.build_model("PP-LiteSeg-T", 5)
    said = []
    loader = threading.Thread(target=lambda: said.append(load_pretrained(other, exported, other.classifier_prefixes)))
    loader.start()
    loader.join()
    assert said and said[0].startswith("full model, classifier replaced: seg_heads."), said
    assert paddle.in_dynamic_mode()

    checkpoint = save_checkpoint(donor, str(tmp_path / "checkpoint"), "PP-LiteSeg-T", ["a", "b", "c"])
    assert load_pretrained(raysegment.build_model("PP-LiteSeg-T", 3), checkpoint, ()) == "full model"  # aux heads included
    with pytest.raises(ModelFolderError, match="has no inference.yml"):
        load_pretrained(net, str(tmp_path), ())
