"""Every registered model: reference parameter names and shapes, forward in both modes, strict loading."""

import os

import cv2
import numpy as np
import paddle
import pytest

from conftest import REFERENCE_KEYS, make_dataset
from raysegment.config import load_config
from raysegment.models import MODELS, OWN_LOSS, UnknownModelError, WeightsError, build_model, load_weights, save_weights
from raysegment.train import train
from raysegment.train.losses import training_loss

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def reference_keys(name):
    """{param name: shape} of PaddleSeg's implementation, read from its state_dict listing."""
    keys = {}
    with open(os.path.join(REFERENCE_KEYS, f"{name}.keys.txt")) as f:
        for line in f:
            key, shape, _dtype = line.rstrip("\n").split("\t")
            keys[key] = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
    return keys


# The largest variants are checked for names and shapes only (building them is cheap, running them
# on CPU in every CI run is not); each family still runs forward through a smaller sibling.
KEYS_ONLY = {"SegFormer-B3", "SegFormer-B4", "SegFormer-B5", "Deeplabv3-R101", "Deeplabv3_Plus-R101", "OCRNet_HRNet-W48",
             "SeaFormer_large", "MaskFormer_small"}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    paddle.seed(0)
    return request.param, build_model(request.param)


@pytest.fixture(scope="module", params=sorted(set(MODELS) - KEYS_ONLY))
def runnable(request):
    paddle.seed(0)
    return request.param, build_model(request.param, num_classes=3)


def test_state_dict_equals_reference(model):
    name, layer = model
    ours = {k: list(v.shape) for k, v in layer.state_dict().items()}
    ref = reference_keys(name)
    assert sorted(set(ours) - set(ref)) == [], "parameters the reference does not have"
    assert sorted(set(ref) - set(ours)) == [], "reference parameters we lack"
    assert {k: s for k, s in ours.items() if s != ref[k]} == {}, "shapes differ"


def test_own_loss_lists_exactly_the_models_with_a_loss_of_their_own(model):
    name, layer = model
    assert hasattr(layer, "loss") == (name in OWN_LOSS)


def test_published_weights_load_strictly_and_only_the_classifier_is_replaced(model):
    """Weights with the published class count (as PaddleX ships them) load into a 3-class model
    with exactly the classifier_prefixes skipped: the prefixes name every class-dependent tensor."""
    name, layer = model
    published = {k: v.numpy() for k, v in layer.state_dict().items()}
    mine = build_model(name, num_classes=3)
    assert load_weights(build_model(name), published) == []
    with pytest.raises(WeightsError, match="mis-shaped"):
        load_weights(mine, published)
    skipped = load_weights(mine, published, skip_prefixes=mine.classifier_prefixes)
    differing = sorted(k for k, v in mine.state_dict().items() if list(v.shape) != list(published[k].shape))
    assert skipped == differing != []
    kept = next(k for k in published if k not in skipped and published[k].size > 1)
    np.testing.assert_array_equal(mine.state_dict()[kept].numpy(), published[kept])


def random_label(n, h, w, num_classes, seed=0):
    label = np.random.default_rng(seed).integers(0, num_classes, (n, h, w))
    label[:, :4] = 255  # an ignored band, as real labels have
    return paddle.to_tensor(label.astype("int64"))


def test_eval_forward_returns_logits_at_input_size(runnable):
    name, layer = runnable
    layer.eval()
    with paddle.no_grad():
        out = layer(paddle.rand([2, 3, 72, 100]))  # not a multiple of 32 on purpose
    assert isinstance(out, list) and len(out) == 1
    assert out[0].shape == [2, layer.num_classes, 72, 100]


def test_train_forward_gives_a_finite_training_loss(runnable):
    name, layer = runnable
    layer.train()
    with paddle.no_grad():
        out = layer(paddle.rand([2, 3, 72, 100]))
        loss = training_loss(layer, out, random_label(2, 72, 100, layer.num_classes))
    layer.eval()
    if isinstance(out, list):  # per-pixel models: every head's logits at the input size
        assert all(o.shape == [2, layer.num_classes, 72, 100] for o in out)
    assert loss.shape == [] and np.isfinite(float(loss)) and float(loss) > 0


def test_backward_reaches_every_trainable_parameter(runnable):
    name, layer = runnable
    layer.train()
    training_loss(layer, layer(paddle.rand([2, 3, 64, 64])), random_label(2, 64, 64, layer.num_classes)).backward()
    missing = [n for n, p in layer.named_parameters() if not p.stop_gradient and p.grad is None]
    layer.clear_gradients()
    layer.eval()
    assert missing == [], f"{name}: no gradient reaches {missing[:5]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(MODELS) - KEYS_ONLY))
def test_trains_two_iterations_from_its_config_and_exports_what_it_trained(name, tmp_path):
    """configs/<name>.yaml's recipe (optimizer, loss, auxiliary heads), shrunk to tiny crops, through
    train(); then the exported best model on Paddle (the reference every other engine is checked
    against at run time: infer/engines/choice.py) gives the checkpoint's own masks in dygraph.
    Converting each architecture to ONNX Runtime and OpenVINO takes ~10 s a model here;
    tests/test_engines.py converts PP-LiteSeg and a Swin model, and `jobs/benchmark.py models`
    converts all 20 and reports each engine's agreement."""
    from raysegment.infer import InferenceOptions, Predictor

    root = make_dataset(tmp_path / "ds", n_train=4, n_val=2, num_classes=3, size=(40, 56))
    cfg = load_config(os.path.join(CONFIGS, f"{name}.yaml"), [
        f"Global.dataset_dir={root}", f"Global.output={tmp_path / 'out'}", "Train.num_classes=3", "Train.epochs_iters=2",
        "Train.batch_size=2", "Train.crop_size=[48,48]", "Train.eval_interval=2", "Train.log_interval=1", "Train.warmup_steps=0"])
    result = train(cfg)
    assert result["iters"] == 2 and result["best_metrics"] is not None
    best = tmp_path / "out" / "best_model"
    img = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    exported = Predictor.load(best / "inference", InferenceOptions(engine="paddle"), device="cpu")
    checkpoint = Predictor.load(best, device="cpu")
    assert checkpoint.engine.run_mode == "dygraph" and exported.engine.name.startswith("paddle:")
    np.testing.assert_array_equal(exported.predict([img])[0], checkpoint.predict([img])[0])


def test_num_classes_and_unknown_name():
    assert build_model("PP-LiteSeg-T", num_classes=5).num_classes == 5
    with pytest.raises(UnknownModelError, match="valid names: .*PP-LiteSeg-T"):
        build_model("PP-LiteSeg-X")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("PP-LiteSeg-T", num_classes=0)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    paddle.seed(3)
    a = build_model("PP-LiteSeg-T", num_classes=4)
    a.eval()
    save_weights(a, str(tmp_path / "m.pdparams"))
    paddle.seed(4)  # different random init, so equality below comes from the loaded weights
    b = build_model("PP-LiteSeg-T", num_classes=4)
    b.eval()
    x = paddle.rand([1, 3, 64, 64])
    assert not np.allclose(a(x)[0].numpy(), b(x)[0].numpy())
    assert load_weights(b, str(tmp_path / "m.pdparams")) == []
    np.testing.assert_array_equal(a(x)[0].numpy(), b(x)[0].numpy())


def test_strict_loading_names_missing_unexpected_and_misshaped_keys(tmp_path):
    layer = build_model("PP-LiteSeg-T", num_classes=4)
    state = {k: v.numpy() for k, v in layer.state_dict().items()}
    state.pop("backbone.features.0.conv.weight")
    state["head.extra.weight"] = np.zeros([3], np.float32)
    state["seg_heads.0.conv_out.weight"] = np.zeros([7, 32, 1, 1], np.float32)
    with pytest.raises(WeightsError) as err:
        load_weights(layer, state)
    msg = str(err.value)
    assert "missing: backbone.features.0.conv.weight" in msg
    assert "unexpected: head.extra.weight" in msg
    assert "seg_heads.0.conv_out.weight (file [7, 32, 1, 1], model [4, 32, 1, 1])" in msg


def test_weights_of_another_model_or_class_count_are_refused(tmp_path):
    path = str(tmp_path / "b.pdparams")
    save_weights(build_model("PP-LiteSeg-B", num_classes=4), path)
    with pytest.raises(WeightsError, match="missing|unexpected|mis-shaped"):
        load_weights(build_model("PP-LiteSeg-T", num_classes=4), path)
    save_weights(build_model("PP-LiteSeg-T", num_classes=19), path)
    with pytest.raises(WeightsError, match=r"mis-shaped: seg_heads.0.conv_out.weight \(file \[19"):
        load_weights(build_model("PP-LiteSeg-T", num_classes=4), path)


def test_skip_prefixes_allows_replacing_a_head_and_reports_it(tmp_path):
    path = str(tmp_path / "t19.pdparams")
    src = build_model("PP-LiteSeg-T", num_classes=19)
    save_weights(src, path)
    dst = build_model("PP-LiteSeg-T", num_classes=4)
    skipped = load_weights(dst, path, skip_prefixes=("seg_heads.0.conv_out", "seg_heads.1.conv_out", "seg_heads.2.conv_out"))
    assert skipped == [f"seg_heads.{i}.conv_out.weight" for i in range(3)]
    np.testing.assert_array_equal(dst.state_dict()["backbone.features.0.conv.weight"].numpy(),
                                  src.state_dict()["backbone.features.0.conv.weight"].numpy())


@pytest.mark.parametrize("content,match", [(None, "does not exist"), (b"not a pickle", "cannot read weights file")])
def test_unreadable_weights_file(tmp_path, content, match):
    path = tmp_path / "w.pdparams"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=match):
        load_weights(build_model("PP-LiteSeg-T", num_classes=2), str(path))


def test_mac_counter_counts_layers_and_direct_matmuls():
    """jobs/benchmark.py models reports GFLOPs from this counter; check it on known shapes."""
    from raysegment.models.flops import count_gmacs

    class Tiny(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv = paddle.nn.Conv2D(3, 8, 3, padding=1)
            self.dw = paddle.nn.Conv2D(8, 8, 3, padding=1, groups=8)
            self.fc = paddle.nn.Linear(8, 4)

        def forward(self, x):
            t = self.fc(self.dw(self.conv(x)).flatten(2).transpose([0, 2, 1]))  # (1, 256, 4)
            attn = paddle.matmul(t, t, transpose_y=True)  # (1, 256, 256), contracting 4
            return [paddle.einsum("nij,njc->nic", attn, t)]  # contracting 256

    original = paddle.matmul
    hw = 16 * 16
    expected = hw * 8 * 27 + hw * 8 * 9 + hw * 4 * 8 + hw * hw * 4 + hw * 4 * hw
    assert count_gmacs(Tiny(), 16) * 1e9 == pytest.approx(expected)
    assert paddle.matmul is original  # the counter puts paddle back as it was


def test_maskformer_eval_scores_are_the_training_predictions_combined():
    """With dropout and drop path off, eval mode's per-class scores are exactly what semantic
    inference makes of train mode's last decoder layer: training and inference see one model."""
    from raysegment.models.layers import DropPath
    from raysegment.models.maskformer import semantic_scores

    paddle.seed(1)
    layer = build_model("MaskFormer_tiny", num_classes=3)
    for sub in layer.sublayers():
        if isinstance(sub, (paddle.nn.Dropout, DropPath)):
            sub.p = 0.0
        if isinstance(sub, paddle.nn.MultiHeadAttention):
            sub.dropout = 0.0
    x = paddle.rand([1, 3, 72, 100])
    layer.train()
    with paddle.no_grad():
        class_logits, masks = layer(x)["layers"][-1]
        expected = semantic_scores(class_logits, masks, [72, 100]).numpy()
    layer.eval()
    with paddle.no_grad():
        scores = layer(x)[0].numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)

    # PaddleSeg's semantic inference, written out in NumPy/OpenCV: each query's mask logits resized
    # to the input (bilinear, half-pixel centres), then sigmoid, weighted by its class probabilities
    logits, masks = class_logits.numpy()[0], masks.numpy()[0]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True))[:, :-1]  # (Q, K), "no object" dropped
    full = np.stack([cv2.resize(m, (100, 72), interpolation=cv2.INTER_LINEAR) for m in masks])
    paddleseg = np.einsum("qk,qhw->khw", probs, 1 / (1 + np.exp(-full)))
    np.testing.assert_allclose(scores[0], paddleseg, rtol=1e-4, atol=1e-5)
    # the other order (stride-4 scores resized afterwards) is measurably different: the check bites
    coarse = np.einsum("qk,qhw->khw", probs, 1 / (1 + np.exp(-masks)))
    resized = np.stack([cv2.resize(c, (100, 72), interpolation=cv2.INTER_LINEAR) for c in coarse])
    assert np.abs(resized - paddleseg).max() > 1e-3
