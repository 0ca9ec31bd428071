"""create_model().predict: every input kind, batching, target_size, result objects, export parity, errors."""

import json
import os
import re
import shutil

import cv2
import numpy as np
import paddle
import pytest
import yaml

import raysegment
from conftest import CLASS_NAMES, jpeg_bytes, pdf_bytes, png_bytes, random_image
from raysegment.data.image import ImageError
from raysegment.infer import ModelFolderError, Predictor, decode_mask, save_checkpoint
from raysegment.infer.engines.paddle import DeviceError
from raysegment.models import UnknownModelError, WeightsError, build_model
from raysegment.storage import StorageError


def reference_mask(layer, rgb):
    """The in-memory model's label map for an RGB image, computed directly (no Predictor)."""
    x = ((rgb.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]
    with paddle.no_grad():
        return paddle.argmax(layer(paddle.to_tensor(x))[0], axis=1).numpy()[0]


@pytest.fixture(scope="module")
def model(inference_dir):
    return raysegment.create_model("PP-LiteSeg-T", model_dir=inference_dir, device="cpu")


def test_exported_and_checkpoint_folders_match_the_in_memory_model(tiny_layer, inference_dir, checkpoint_dir):
    images = [random_image(64, 96, seed=s) for s in range(3)] + [random_image(37, 53, seed=9)]
    bgr = [cv2.cvtColor(i, cv2.COLOR_RGB2BGR) for i in images]  # arrays are BGR, as in PaddleX
    for folder in (inference_dir, checkpoint_dir):
        results = list(raysegment.create_model("PP-LiteSeg-T", model_dir=folder).predict(bgr, batch_size=2))
        assert len(results) == 4
        for rgb, res in zip(images, results):
            np.testing.assert_array_equal(res["pred"][0], reference_mask(tiny_layer, rgb))
            np.testing.assert_array_equal(res["input_img"], rgb)
            assert res["pred"].shape == (1, *rgb.shape[:2])
    # a random model still has to predict more than one class, or the comparisons above prove little
    assert len(np.unique(results[0]["pred"])) > 1


def test_folder_kinds_use_their_engines(inference_dir, checkpoint_dir):
    engine = raysegment.create_model(model_dir=inference_dir).predictor.engine
    assert engine.paddle.run_mode == "mkldnn" and "gave plain Paddle's masks on the probe" in engine.paddle.reason
    assert raysegment.create_model(model_dir=inference_dir, run_mode="paddle").predictor.engine.run_mode == "paddle"  # pinned
    assert raysegment.create_model(model_dir=checkpoint_dir).predictor.engine.run_mode == "dygraph"
    with pytest.raises(ValueError, match="is a checkpoint, which runs in Paddle dygraph"):
        raysegment.create_model(model_dir=checkpoint_dir, engine="openvino")


def test_paddlex_engine_keywords(inference_dir):
    """PaddleX's create_model(engine=, engine_config=, use_hpip=, hpi_config=) as test_paddlex_compat runs PaddleX."""
    pinned = raysegment.create_model(model_dir=inference_dir, engine="paddle_static", engine_config={"run_mode": "paddle"})
    assert pinned.predictor.engine.run_mode == "paddle"
    hpi = raysegment.create_model(model_dir=inference_dir, use_hpip=True, hpi_config={"backend": "onnxruntime"})
    assert hpi.predictor.engine.candidates == ["onnxruntime"]
    # bf16 on oneDNN depends on the CPU and Paddle build (Paddle 3.2.2 lacks a bf16 pool2d on some
    # CPUs): it either runs pinned or is refused by name, never swapped for another mode silently
    try:
        bf16 = raysegment.create_model(model_dir=inference_dir, engine="paddle", engine_config={"precision": "bf16"})
    except RuntimeError as e:
        assert re.search(r"run_mode 'mkldnn_bf16' cannot run .*; leave run_mode unset", str(e)), e
    else:
        assert bf16.predictor.engine.run_mode == "mkldnn_bf16"
        assert next(iter(bf16.predict(np.zeros((64, 64, 3), np.uint8)))).label_map.shape == (64, 64)
    for kw, match in [({"engine": "tensorrt"}, "create_model.engine: 'tensorrt' is not one of null, paddle, paddle_static"),
                      ({"engine_config": {"run_mode": "paddle", "trt_fp16": True}}, "create_model.engine_config: unknown key 'trt_fp16'"),
                      ({"engine_config": {"run_mode": "trt_fp16"}}, "engine_config.run_mode: 'trt_fp16' is not one of null, mkldnn, paddle, mkldnn_bf16"),
                      ({"run_mode": "paddle", "engine_config": {"run_mode": "mkldnn"}}, "disagree"),
                      ({"engine": "onnxruntime", "run_mode": "mkldnn"}, "is a Paddle mode; engine 'onnxruntime' does not take one"),
                      ({"engine": "onnxruntime", "engine_config": {"precision": "bf16"}}, "bf16 runs on openvino or paddle"),
                      ({"engine_config": {"precision": "fp16"}}, "fp16 needs a GPU"),
                      ({"engine_config": {"precision": "int8"}}, "precision int8 needs engine_config.calibration_images"),
                      ({"engine": "paddle", "engine_config": {"precision": "int8", "calibration_images": "x"}},
                       "precision int8 runs on onnxruntime or openvino"),
                      ({"engine_config": {"calibration_images": "x"}}, "calibration_images applies to precision int8, not fp32"),
                      ({"hpi_config": {"backend": "openvino"}}, "hpi_config applies with use_hpip=True"),
                      ({"use_hpip": True, "hpi_config": {"backend": "om"}}, "hpi_config.backend: 'om' is not one of"),
                      ({"slide_windw": 512}, "create_model: unknown key 'slide_windw'; did you mean 'slide_window'")]:
        with pytest.raises(ValueError, match=match):
            raysegment.create_model(model_dir=inference_dir, device="cpu", **kw)


def test_cpu_mode_falls_back_to_plain_paddle_when_onednn_fails(inference_dir, monkeypatch):
    from raysegment.infer.engines.paddle import PaddleEngine

    create = PaddleEngine._create

    def no_onednn(self, mode):
        if mode == "mkldnn":
            raise RuntimeError("(Unimplemented) ConvertPirAttribute2RuntimeAttribute not support")
        return create(self, mode)

    monkeypatch.setattr(PaddleEngine, "_create", no_onednn)
    engine = raysegment.create_model(model_dir=inference_dir, engine="paddle").predictor.engine
    assert engine.run_mode == "paddle" and engine.reason.startswith("oneDNN fails ((Unimplemented)")
    with pytest.raises(RuntimeError, match="Unimplemented"):  # a pinned mode is not replaced
        raysegment.create_model(model_dir=inference_dir, run_mode="mkldnn")


def test_path_directory_and_list_inputs(model, image_dir):
    one = list(model.predict(str(image_dir / "a.jpg")))
    assert [r["input_path"] for r in one] == [str(image_dir / "a.jpg")]
    tree = list(model.predict(str(image_dir), batch_size=2))
    assert [os.path.relpath(r["input_path"], image_dir) for r in tree] == ["a.jpg", "sub/b.png", "sub/c.jpg"]
    assert [r["pred"].shape for r in tree] == [(1, 64, 96), (1, 64, 96), (1, 48, 80)]
    mixed = list(model.predict([str(image_dir / "sub"), cv2.imread(str(image_dir / "a.jpg"))]))
    assert [r["input_path"] for r in mixed][-1] is None and len(mixed) == 3
    np.testing.assert_array_equal(mixed[-1]["pred"], tree[0]["pred"])


def test_batch_size_does_not_change_results(model, image_dir):
    single = [r["pred"] for r in model.predict(str(image_dir), batch_size=1)]
    batched = [r["pred"] for r in model.predict(str(image_dir), batch_size=3)]
    assert len(single) == 3
    for a, b in zip(single, batched, strict=True):
        np.testing.assert_array_equal(a, b)


def test_predictor_batch_size_caps_each_forward_pass(inference_dir):
    """Predict.batch_size reaches Predictor.predict: same-shaped inputs go through the engine at
    most batch_size at a time, and the masks do not depend on it."""
    predictor = raysegment.create_model(model_dir=inference_dir).predictor
    images = [random_image(64, 96, seed=s) for s in range(5)] + [random_image(48, 80, seed=9)]
    whole = predictor.predict(images)
    engine, sizes = predictor.engine, []
    predictor.engine = lambda batch: sizes.append(len(batch)) or engine(batch)
    capped = predictor.predict(images, batch_size=2)
    assert sorted(sizes) == [1, 1, 2, 2]  # five 64x96 inputs as 2 + 2 + 1, the 48x80 one alone
    assert len(whole) == 6
    for a, b in zip(whole, capped, strict=True):
        np.testing.assert_array_equal(a, b)


def test_url_input_from_a_local_http_server(model, http_root):
    root, base = http_root
    img = random_image(64, 96, seed=4)
    (root / "street.jpg").write_bytes(jpeg_bytes(img))
    (res,) = model.predict(f"{base}/street.jpg")
    (local,) = model.predict(str(root / "street.jpg"))
    assert res["input_path"] == f"{base}/street.jpg"
    np.testing.assert_array_equal(res["pred"], local["pred"])
    with pytest.raises(StorageError, match=r"GET .*/missing.jpg answered HTTP 404"):
        list(model.predict(f"{base}/missing.jpg"))


def test_s3_key_and_prefix_inputs(model, s3_bucket, image_dir):
    from raysegment import storage

    for rel in ("a.jpg", "sub/b.png", "sub/c.jpg"):
        storage.write_bytes(f"s3://{s3_bucket}/imgs/{rel}", (image_dir / rel).read_bytes())
    storage.write_bytes(f"s3://{s3_bucket}/imgs/notes.txt", b"not an image")
    results = list(model.predict(f"s3://{s3_bucket}/imgs/", batch_size=2))
    assert [r["input_path"] for r in results] == [f"s3://{s3_bucket}/imgs/{p}" for p in ("a.jpg", "sub/b.png", "sub/c.jpg")]
    local = list(model.predict(str(image_dir)))
    for a, b in zip(results, local):
        np.testing.assert_array_equal(a["pred"], b["pred"])
    (single,) = model.predict(f"s3://{s3_bucket}/imgs/sub/c.jpg")
    np.testing.assert_array_equal(single["pred"], local[2]["pred"])
    with pytest.raises(StorageError, match=f"s3://{s3_bucket}/imgs/nope.jpg does not exist"):
        list(model.predict(f"s3://{s3_bucket}/imgs/nope.jpg"))


def test_target_size_priority_predict_over_create_model_over_yaml(inference_dir, tmp_path):
    folder = tmp_path / "resized"
    shutil.copytree(inference_dir, folder)
    meta = yaml.safe_load((folder / "inference.yml").read_text())
    meta["Deploy"]["transforms"].insert(0, {"type": "Resize", "target_size": [64, 32], "keep_ratio": False, "size_divisor": None})
    (folder / "inference.yml").write_text(yaml.safe_dump(meta))
    img = random_image(60, 90)

    from_yaml = raysegment.create_model(model_dir=str(folder))
    assert from_yaml.predictor.preprocess(img).shape == (3, 32, 64)
    assert from_yaml.predictor.preprocess(img, target_size=-1).shape == (3, 60, 90)
    assert from_yaml.predictor.preprocess(img, target_size=(48, 40)).shape == (3, 40, 48)
    from_create = raysegment.create_model(model_dir=str(folder), target_size=96)
    assert from_create.predictor.preprocess(img).shape == (3, 96, 96)
    assert from_create.predictor.preprocess(img, target_size=-1).shape == (3, 60, 90)
    # whatever the network input, the mask comes back at the original size
    (res,) = from_create.predict(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), target_size=(32, 32))
    assert res["pred"].shape == (1, 60, 90)
    with pytest.raises(ValueError, match="target_size: expected -1, a positive int"):
        list(from_create.predict(img, target_size=0))


def test_result_json_is_compact_and_lossless(model, image_dir, tmp_path):
    (res,) = model.predict(str(image_dir / "a.jpg"))
    data = res.json["res"]
    assert data["input_path"] == str(image_dir / "a.jpg") and data["class_names"] == CLASS_NAMES
    assert data["pred"]["shape"] == [64, 96] and data["pred"]["encoding"] == "png+base64"
    np.testing.assert_array_equal(decode_mask(data["pred"]), res["pred"][0])
    nested = json.dumps(res["pred"].tolist())
    assert len(json.dumps(data)) < len(nested) / 3

    saved = res.save_to_json(str(tmp_path / "out"))
    assert saved == str(tmp_path / "out" / "a_res.json")
    with open(saved) as f:
        np.testing.assert_array_equal(decode_mask(json.load(f)["pred"]), res["pred"][0])
    assert res.save_to_json(str(tmp_path / "named.json")) == str(tmp_path / "named.json")


def test_save_to_img_follows_paddlex_naming_and_colours(model, image_dir, tmp_path):
    (res,) = model.predict(str(image_dir / "sub" / "b.png"))
    path = res.save_to_img(str(tmp_path / "vis"))
    assert path == str(tmp_path / "vis" / "b_res.png")
    saved = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(saved, res.img["res"])
    # PaddleX colours class 0 with VOC colour 1 (128, 0, 0), class 1 with (0, 128, 0)
    label = res["pred"][0]
    for cls, colour in ((0, [128, 0, 0]), (1, [0, 128, 0]), (2, [128, 128, 0])):
        if (label == cls).any():
            assert (saved[label == cls] == colour).all()
    (arr_res,) = model.predict(np.zeros((32, 32, 3), np.uint8))
    assert os.path.basename(arr_res.save_to_img(str(tmp_path / "vis"))).startswith("image_")
    assert res.save_to_img(str(tmp_path / "explicit.png")) == str(tmp_path / "explicit.png")


def test_print_leaves_out_the_mask(model, image_dir, capsys):
    (res,) = model.predict(str(image_dir / "a.jpg"))
    res.print()
    out = json.loads(capsys.readouterr().out)
    assert out["res"]["pred"] == "..." and out["res"]["input_path"].endswith("a.jpg")


def test_official_model_cache_is_used_when_no_model_dir(inference_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PADDLE_PDX_CACHE_HOME", str(tmp_path))
    shutil.copytree(inference_dir, tmp_path / "official_models" / "PP-LiteSeg-T")
    assert raysegment.create_model("PP-LiteSeg-T").model_name == "PP-LiteSeg-T"


def test_model_and_folder_errors(inference_dir, tmp_path):
    with pytest.raises(UnknownModelError, match="valid names"):
        raysegment.create_model("PP-LiteSeg-Q", model_dir=inference_dir)
    with pytest.raises(ModelFolderError, match="holds a PP-LiteSeg-T, not a PP-LiteSeg-B"):
        raysegment.create_model("PP-LiteSeg-B", model_dir=inference_dir)
    with pytest.raises(ModelFolderError, match="does not exist"):
        raysegment.create_model(model_dir=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="has no inference.yml"):
        raysegment.create_model(model_dir=str(tmp_path / "empty"))


def test_checkpoint_with_weights_for_another_class_count(tmp_path):
    folder = save_checkpoint(build_model("PP-LiteSeg-T", num_classes=19), str(tmp_path / "c"), "PP-LiteSeg-T", CLASS_NAMES)
    with pytest.raises(WeightsError, match=r"mis-shaped: seg_heads.0.conv_out.weight \(file \[19, 32, 1, 1\], model \[3, 32, 1, 1\]\)"):
        raysegment.create_model(model_dir=folder)


@pytest.mark.gpu
def test_a_gpu_gives_the_cpu_masks(inference_dir, image_dir):
    """The exported folder on paddle.inference's GPU mode and, by default, on the fastest GPU engine
    that agrees with Paddle, against plain Paddle on the CPU."""
    cpu = [r["pred"] for r in raysegment.create_model(model_dir=inference_dir, device="cpu", run_mode="paddle").predict(str(image_dir))]
    pinned = raysegment.create_model(model_dir=inference_dir, device="gpu", engine="paddle")
    assert pinned.predictor.engine.run_mode == "gpu"
    for gpu_model in (pinned, raysegment.create_model(model_dir=inference_dir, device="gpu")):
        gpu = [r["pred"] for r in gpu_model.predict(str(image_dir))]
        assert len(gpu) == len(cpu) == 3
        for a, b in zip(cpu, gpu, strict=True):
            assert (a == b).mean() >= 0.999


@pytest.mark.parametrize("device,match", [("gpu", "asks for a GPU but none is available"), ("gpu:1", "asks for a GPU"), ("tpu", "not one of cpu, gpu, gpu:N")])
def test_device_errors(inference_dir, device, match):
    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 1:
        pytest.skip("this machine has GPUs")
    with pytest.raises(DeviceError, match=match):
        raysegment.create_model(model_dir=inference_dir, device=device)


def test_bad_inputs_are_named(model, tmp_path):
    with pytest.raises(StorageError, match="no/such.jpg' does not exist"):
        list(model.predict("no/such.jpg"))
    (tmp_path / "fake.jpg").write_bytes(b"GIF89a not really")
    with pytest.raises(ImageError, match="fake.jpg is not a decodable image"):
        list(model.predict(str(tmp_path / "fake.jpg")))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png is empty"):
        list(model.predict(str(tmp_path / "empty.png")))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(StorageError, match="has no images"):
        list(model.predict(str(tmp_path / "nothing")))
    with pytest.raises(ImageError, match="is a int"):
        list(model.predict([3]))
    with pytest.raises(ValueError, match="batch_size"):
        list(model.predict(str(tmp_path), batch_size=0))


def test_gray_rgba_and_16_bit_files_predict(model, tmp_path):
    gray = cv2.cvtColor(random_image(40, 60), cv2.COLOR_RGB2GRAY)
    (tmp_path / "g.png").write_bytes(png_bytes(gray))
    (tmp_path / "rgba.png").write_bytes(png_bytes(np.dstack([random_image(40, 60), np.full((40, 60), 128, np.uint8)])))
    bgr = cv2.cvtColor(random_image(40, 60), cv2.COLOR_RGB2BGR)
    (tmp_path / "deep.png").write_bytes(png_bytes(bgr.astype(np.uint16) * 257))
    results = list(model.predict(str(tmp_path)))  # sorted: deep.png, g.png, rgba.png
    assert [r["pred"].shape for r in results] == [(1, 40, 60)] * 3
    # 16-bit v * 257 scales back to exactly v, so it predicts as the 8-bit image does
    (eight,) = model.predict(bgr)
    np.testing.assert_array_equal(results[0]["pred"], eight["pred"])


def test_pixel_limit_is_enforced(inference_dir, image_dir):
    small = raysegment.create_model(model_dir=inference_dir, max_image_pixels=1000)
    with pytest.raises(ImageError, match="over the limit of 1000"):
        list(small.predict(str(image_dir / "a.jpg")))


def test_onednn_failing_on_a_later_input_falls_back_for_good(inference_dir):
    """MaskFormer's graph fails in oneDNN (Paddle 3.2.2) at some input sizes: an unpinned engine
    that passed its probe must not crash on such an input, but carry on in plain Paddle."""
    model = raysegment.create_model(model_dir=inference_dir, engine="paddle")
    engine = model.predictor.engine
    assert engine.run_mode == "mkldnn"

    class FailsInOneDNN:
        def get_input_names(self):
            raise RuntimeError("(InvalidArgument) The input's second dimension and weight's first dimension is expected")

    engine._predictor = FailsInOneDNN()  # the predictor oneDNN built, failing on this input
    x = model.predictor.preprocess(random_image(64, 96))[None]
    mask = engine(x)
    assert engine.run_mode == "paddle" and "oneDNN fails on input [1, 3, 64, 96]" in engine.reason
    plain = raysegment.create_model(model_dir=inference_dir, run_mode="paddle").predictor.engine
    np.testing.assert_array_equal(mask, plain(x))


def test_plain_and_auto_cpu_modes_agree(inference_dir, image_dir):
    auto = [r["pred"] for r in raysegment.create_model(model_dir=inference_dir).predict(str(image_dir))]
    plain = [r["pred"] for r in raysegment.create_model(model_dir=inference_dir, run_mode="paddle").predict(str(image_dir))]
    assert len(auto) == 3
    for a, b in zip(auto, plain, strict=True):
        np.testing.assert_array_equal(a, b)


def test_predictor_from_layer_matches_reference(tiny_layer):
    predictor = Predictor.from_layer(tiny_layer, "PP-LiteSeg-T", CLASS_NAMES)
    img = random_image(50, 70, seed=5)
    (mask,) = predictor.predict([img])
    np.testing.assert_array_equal(mask, reference_mask(tiny_layer, img))


def test_pdf_pages_are_predicted_with_their_page_index(model, tmp_path):
    from raysegment.data.pdf import render_pages

    pages = [random_image(48, 64, seed=11), random_image(40, 56, seed=12)]
    pdf = tmp_path / "docs" / "doc.pdf"
    pdf.parent.mkdir()
    pdf.write_bytes(pdf_bytes(*pages))
    (tmp_path / "docs" / "photo.jpg").write_bytes(jpeg_bytes(pages[0]))
    rendered = render_pages(pdf.read_bytes())
    assert [r.shape for r in rendered] == [(96, 128, 3), (80, 112, 3)]  # PaddleX's scale 2
    # a page renders as the picture it holds (JPEG-compressed by Pillow's PDF writer)
    assert np.abs(cv2.resize(rendered[0], (64, 48), interpolation=cv2.INTER_AREA).astype(int) - pages[0]).mean() < 8
    results = list(model.predict(str(tmp_path / "docs"), batch_size=2))
    assert [(os.path.basename(r["input_path"]), r["page_index"]) for r in results] == [("doc.pdf", 0), ("doc.pdf", 1), ("photo.jpg", None)]
    for res, page in zip(results, rendered):
        (want,) = model.predict(np.ascontiguousarray(page[:, :, ::-1]))
        np.testing.assert_array_equal(res["pred"], want["pred"])
        assert res.json["res"]["page_index"] == res["page_index"]
    assert os.path.basename(results[1].save_to_img(str(tmp_path / "vis"))) == "doc_1_res.png"
    assert os.path.basename(results[1].save_to_json(str(tmp_path / "vis"))) == "doc_1_res.json"
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    with pytest.raises(ImageError, match="bad.pdf is not a readable PDF"):
        list(model.predict(str(tmp_path / "bad.pdf")))
