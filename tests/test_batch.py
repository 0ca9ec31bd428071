"""The bulk job on a local Ray: folders, URL lists, S3, errors, resume; masks equal create_model's."""

import base64
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

import raysegment
from conftest import jpeg_bytes, pdf_bytes, png_bytes, random_image
from raysegment import bulk_output, storage
from raysegment.batch import PredictActor, predict_bulk
from raysegment.config import load_config
from raysegment.data.dataset import decode_label
from raysegment.ray_env import Cluster, predict_actors


def bulk(model_dir, inputs, output, batch_size=None, *overrides):
    """The bulk job as jobs/predict.py runs it: a config whose Predict section names the work."""
    sizes = [f"Ray.predict_batch_size={batch_size}", f"Predict.batch_size={batch_size}"] if batch_size else []
    cfg = load_config(None, [*sizes, *overrides])
    cfg.Predict.model_dir, cfg.Predict.input, cfg.Predict.output = model_dir, inputs, output
    return predict_bulk(cfg)


def read_jsonl(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_masks_match(model, output, pairs, model_name="PP-LiteSeg-T"):
    """pairs: (input uri, output stem); each saved mask equals create_model().predict's."""
    for uri, stem in pairs:
        (expected,) = model.predict(uri)
        png = storage.read_bytes(storage.join(output, f"{stem}.png"))
        mask = decode_label(png)
        np.testing.assert_array_equal(mask, expected["pred"][0], err_msg=uri)
        assert base64.b64decode(expected.json["res"]["pred"]["data"]) == png  # one label-map PNG everywhere
        meta = json.loads(storage.read_bytes(storage.join(output, f"{stem}.json")))
        assert meta["uri"] == uri and (meta["height"], meta["width"]) == mask.shape
        assert sum(meta["pixel_counts"].values()) == mask.size
        assert meta["model"] == model_name and meta["mask"] == os.path.basename(stem) + ".png"


@pytest.fixture(scope="module")
def model(inference_dir):
    return raysegment.create_model(model_dir=inference_dir)


@pytest.mark.slow
def test_folder_tree_with_broken_files(tmp_path, inference_dir, model, image_dir, ray_local):
    (image_dir / "sub" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (image_dir / "empty.png").write_bytes(b"")
    (image_dir / "big.png").write_bytes(png_bytes(random_image(100, 100)))
    out = tmp_path / "out"
    summary = bulk(inference_dir, str(image_dir), str(out), 2, "Predict.max_image_pixels=8000", "Predict.save_visualization=true")
    assert (summary["inputs"], summary["done"], summary["errors"]) == (6, 3, 3)
    assert json.loads((out / "_SUCCESS.json").read_text()) == summary
    # each actor's engine choice per input shape, and why, reported
    assert summary["engine"] and all(set(e.split(", ")) <= {"onnxruntime", "openvino:fp32", "paddle:mkldnn"} for e in summary["engine"])
    assert summary["engine_reasons"] and all(r.startswith("input ") and "Paddle's" in r for r in summary["engine_reasons"])
    manifest = read_jsonl((out / "_manifest.jsonl").read_text())
    assert sorted(m["uri"] for m in manifest) == sorted(str(p) for p in image_dir.rglob("*") if p.is_file())
    errors = {os.path.basename(e["uri"]): e for e in read_jsonl((out / "_errors.jsonl").read_text())}
    assert set(errors) == {"corrupt.jpg", "empty.png", "big.png"}
    assert errors["empty.png"]["error"] == "ImageError" and "is empty" in errors["empty.png"]["message"]
    assert "over the limit of 8000" in errors["big.png"]["message"]
    assert_masks_match(model, str(out), [(str(image_dir / "a.jpg"), "a"), (str(image_dir / "sub" / "b.png"), "sub/b"),
                                         (str(image_dir / "sub" / "c.jpg"), "sub/c")])
    assert (out / "sub" / "c_vis.jpg").exists() and not (out / "_parts").exists()
    vis = cv2.imread(str(out / "sub" / "c_vis.jpg"))
    assert vis.shape[0] == 48 and vis.shape[1] > 80  # the image (80 x 48) and its legend beside it


@pytest.mark.slow
def test_another_architecture_through_the_bulk_job(tmp_path, maskformer_dir, image_dir, ray_local):
    out = tmp_path / "out"
    summary = bulk(maskformer_dir, str(image_dir), str(out), 2)
    assert (summary["done"], summary["errors"]) == (3, 0)
    assert_masks_match(raysegment.create_model(model_dir=maskformer_dir), str(out),
                       [(str(image_dir / "a.jpg"), "a"), (str(image_dir / "sub" / "b.png"), "sub/b")], "MaskFormer_tiny")


@pytest.mark.slow
def test_url_list_from_a_local_http_server(tmp_path, inference_dir, model, http_root, ray_local):
    root, base = http_root
    for name in ("x.jpg", "y.jpg"):
        (root / name).write_bytes(jpeg_bytes(random_image(40, 56, seed=len(name) + ord(name[0]))))
    urls = tmp_path / "urls.txt"
    urls.write_text(f"# a comment\n{base}/x.jpg\n{base}/missing.jpg\n\n{base}/y.jpg\n")
    out = tmp_path / "out"
    summary = bulk(inference_dir, str(urls), str(out), 2)
    assert (summary["inputs"], summary["done"], summary["errors"]) == (3, 2, 1)
    (error,) = read_jsonl((out / "_errors.jsonl").read_text())
    assert error["uri"] == f"{base}/missing.jpg" and "HTTP 404" in error["message"]
    host = base.split("//")[1].replace(":", "_")
    assert_masks_match(model, str(out), [(f"{base}/x.jpg", f"{host}/x"), (f"{base}/y.jpg", f"{host}/y")])


@pytest.mark.slow
def test_s3_prefix_written_back_to_s3(tmp_path, inference_dir, model, image_dir, s3_bucket, ray_local):
    for path in image_dir.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"s3://{s3_bucket}/in/{path.relative_to(image_dir).as_posix()}", path.read_bytes())
    storage.write_bytes(f"s3://{s3_bucket}/in/broken.jpg", b"nope")
    out = f"s3://{s3_bucket}/masks"
    summary = bulk(inference_dir, f"s3://{s3_bucket}/in/", out, 2)
    assert (summary["inputs"], summary["done"], summary["errors"]) == (4, 3, 1)
    manifest = read_jsonl(storage.read_bytes(f"{out}/_manifest.jsonl").decode())
    assert len(manifest) == 4 and json.loads(storage.read_bytes(f"{out}/_SUCCESS.json"))["done"] == 3
    assert not storage.list_files(f"{out}/_parts/", (".jsonl",))
    assert_masks_match(model, out, [(f"s3://{s3_bucket}/in/a.jpg", "a"), (f"s3://{s3_bucket}/in/sub/c.jpg", "sub/c")])


def test_rerun_skips_done_inputs_and_duplicates_count_once(tmp_path, inference_dir, image_dir, ray_local):
    out = tmp_path / "out"
    first = bulk(inference_dir, [str(image_dir / "a.jpg"), str(image_dir / "a.jpg")], str(out))
    assert (first["inputs"], first["processed_this_run"]) == (1, 1)
    (image_dir / "a.png").write_bytes((image_dir / "sub" / "b.png").read_bytes())  # same output stem as a.jpg
    second = bulk(inference_dir, str(image_dir), str(out), 2)
    assert second["skipped_already_done"] == 1 and second["processed_this_run"] == 3
    assert (second["inputs"], second["done"], second["errors"]) == (4, 3, 1)
    errors = read_jsonl((out / "_errors.jsonl").read_text())
    assert [e["error"] for e in errors] == ["OutputCollision"]
    manifest = read_jsonl((out / "_manifest.jsonl").read_text())
    assert len({m["uri"] for m in manifest}) == len(manifest) == 4


@pytest.mark.slow
def test_killed_job_resumes_and_every_input_is_done_once(tmp_path, inference_dir, ray_local):
    images = tmp_path / "many"
    for i in range(16):
        (images / f"{i:02d}").mkdir(parents=True)
        (images / f"{i:02d}" / "img.jpg").write_bytes(jpeg_bytes(random_image(64, 96, seed=i)))
    out = tmp_path / "out"
    job = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs", "predict.py")
    cmd = [sys.executable, job, "--model-dir", inference_dir, "--input", str(images), "--output", str(out), "--batch-size", "1"]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and len(list((out / "_parts").glob("manifest-*"))) < 3:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written_before = len(list((out / "_parts").glob("manifest-*")))
    assert written_before >= 3 and not (out / "_SUCCESS.json").exists()

    summary = bulk(inference_dir, str(images), str(out), 4)
    assert summary["skipped_already_done"] >= 3 and summary["processed_this_run"] <= 13
    assert (summary["inputs"], summary["done"], summary["errors"]) == (16, 16, 0)
    manifest = read_jsonl((out / "_manifest.jsonl").read_text())
    assert sorted(m["uri"] for m in manifest) == sorted(str(p) for p in images.rglob("*.jpg"))
    assert all((out / f"{i:02d}" / "img.png").exists() for i in range(16))


TWO_CPUS = Cluster(((2.0, 0.0),))


def test_the_predict_section_reaches_every_actor(tmp_path, inference_dir):
    """What PredictActor builds (in this process; Ray builds the same from the same arguments)."""
    cfg = load_config(None, ["Predict.kernel_option.run_mode=mkldnn", "Predict.batch_size=3", "Ray.predict_batch_size=4",
                             "Predict.target_size=64", "Ray.cpus_per_actor=0.5", "Predict.save_visualization=true"])
    cfg.Predict.output = str(tmp_path)
    actor = PredictActor(inference_dir, cfg.Predict, predict_actors(cfg, TWO_CPUS))
    assert actor.predictor.engine.run_mode == "mkldnn" and actor.batch_size == 3 and actor.predictor.target_size == 64
    assert actor.predictor.engine.cpu_threads == 1 and actor.writer.visualize and actor.writer.output == str(tmp_path)
    cfg = load_config(None, ["Predict.engine=openvino", "Predict.engine_config.precision=bf16", "Ray.cpus_per_actor=0.5"])
    engine = PredictActor(inference_dir, cfg.Predict, predict_actors(cfg, TWO_CPUS)).predictor.engine
    assert engine.candidates == ["openvino"] and engine.spec.precision == "bf16" and engine.threads == 1
    (tmp_path / "cal").mkdir()
    for i in range(20):
        (tmp_path / "cal" / f"{i}.jpg").write_bytes(jpeg_bytes(random_image(48, 64, seed=i)))
    relative = os.path.relpath(tmp_path / "cal")  # taken from the driver's directory, wherever the actor runs
    cfg = load_config(None, ["Predict.engine_config.precision=int8", f"Predict.engine_config.calibration_images={relative}"])
    engine = PredictActor(inference_dir, cfg.Predict, predict_actors(cfg, TWO_CPUS)).predictor.engine
    assert engine.spec.precision == "int8" and engine.spec.calibration_images == str(tmp_path / "cal")
    assert len(engine._calibration) == 20 and set(engine.candidates) <= {"openvino", "onnxruntime"}


def test_a_forward_batch_larger_than_an_actor_call_is_refused(tmp_path, inference_dir, image_dir, ray_local):
    with pytest.raises(ValueError, match=r"Predict.batch_size \(8\) is above Ray.predict_batch_size \(4\)"):
        bulk(inference_dir, str(image_dir), str(tmp_path / "out"), None, "Predict.batch_size=8", "Ray.predict_batch_size=4")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_plan_streams_in_chunks_and_keeps_every_input_once(tmp_path, monkeypatch):
    """BulkRun.plan over a generator longer than several chunks: inputs recorded earlier, repeats
    and output collisions are caught across chunk boundaries; the merge keeps one line per input."""
    monkeypatch.setattr(bulk_output, "CHUNK", 100)
    run = bulk_output.BulkRun(str(tmp_path))
    run.record((f"u{i}", "done", [f"r{i}.png", f"r{i}.json"], "") for i in range(150))  # an earlier run
    run.commit({})
    run.record([("u3", "done", ["r3.png", "r3.json"], "")])  # a part left by a kill between merge and cleanup
    listed = ({"uri": f"u{i}", "rel": f"r{i}.jpg"} for i in [*range(400), 5, 250])  # 5 and 250 again, chunks later
    extra = [{"uri": "x1", "rel": "new.jpg"}, *({"uri": f"y{i}", "rel": f"y{i}.jpg"} for i in range(120)),
             {"uri": "x2", "rel": "new.png"}, {"uri": "x3", "rel": "r7.png"}]  # x2, x3: outputs of others
    chunks = list(run.plan(x for part in (listed, extra) for x in part))
    todo = [row["uri"] for chunk in chunks for row in chunk]
    assert todo == [f"u{i}" for i in range(150, 400)] + ["x1"] + [f"y{i}" for i in range(120)]
    assert max(len(c) for c in chunks) <= 100 and (run.skipped_done, run.skipped_errors, run.collisions) == (150, 0, 2)
    run.record((u, "done", [], "") for u in todo)
    (tmp_path / "_parts" / ".tmp-abc-manifest-1.jsonl").write_text("{half")  # a write a kill cut short
    summary = run.commit({})
    assert (summary["inputs"], summary["done"], summary["errors"]) == (523, 521, 2)
    assert not (tmp_path / "_parts").exists()
    manifest = [json.loads(line) for line in (tmp_path / "_manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == len({m["uri"] for m in manifest}) == 523
    errors = [json.loads(line) for line in (tmp_path / "_errors.jsonl").read_text().splitlines()]
    assert sorted(e["uri"] for e in errors) == ["x2", "x3"] and {e["error"] for e in errors} == {"OutputCollision"}


@pytest.mark.slow
def test_pdf_inputs_give_one_output_per_page_and_one_manifest_line(tmp_path, inference_dir, model, ray_local):
    from raysegment.data.pdf import render_pages

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "report.pdf").write_bytes(pdf_bytes(random_image(48, 64, seed=21), random_image(40, 40, seed=22)))
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7 cut short")
    (docs / "photo.jpg").write_bytes(jpeg_bytes(random_image(30, 40, seed=23)))
    out = tmp_path / "out"
    summary = bulk(inference_dir, str(docs), str(out), 2)
    assert (summary["inputs"], summary["done"], summary["errors"]) == (3, 2, 1)
    manifest = {os.path.basename(m["uri"]): m for m in read_jsonl((out / "_manifest.jsonl").read_text())}
    assert manifest["report.pdf"]["outputs"] == ["report_0.png", "report_0.json", "report_1.png", "report_1.json"]
    assert manifest["broken.pdf"]["status"] == "error"
    (error,) = read_jsonl((out / "_errors.jsonl").read_text())
    assert error["error"] == "ImageError" and "not a readable PDF" in error["message"]
    for index, page in enumerate(render_pages((docs / "report.pdf").read_bytes())):
        (want,) = model.predict(np.ascontiguousarray(page[:, :, ::-1]))
        np.testing.assert_array_equal(decode_label((out / f"report_{index}.png").read_bytes()), want["pred"][0])
        meta = json.loads((out / f"report_{index}.json").read_text())
        assert meta["page_index"] == index and meta["uri"] == str(docs / "report.pdf")
    again = bulk(inference_dir, str(docs), str(out), 2)  # a rerun redoes nothing, and counts the error apart
    assert (again["processed_this_run"], again["skipped_already_done"], again["skipped_errors"]) == (0, 2, 1)


@pytest.mark.slow
def test_slide_mode_reaches_the_bulk_actors(tmp_path, inference_dir, ray_local):
    images = tmp_path / "big"
    images.mkdir()
    (images / "scan.png").write_bytes(png_bytes(random_image(300, 420, seed=31)))
    out = tmp_path / "out"
    summary = bulk(inference_dir, str(images), str(out), None, "Predict.slide_window=[128,96]", "Predict.slide_stride=[96,64]")
    assert summary["done"] == 1
    (want,) = raysegment.create_model(model_dir=inference_dir, slide_window=(128, 96), slide_stride=(96, 64)).predict(str(images / "scan.png"))
    np.testing.assert_array_equal(decode_label((out / "scan.png").read_bytes()), want["pred"][0])


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_predict(*args, env=None):
    """jobs/predict.py as a user runs it; (exit code, stderr's lines)."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "predict.py"), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})
    return done.returncode, done.stdout, done.stderr.strip().splitlines()


def test_missing_or_empty_inputs_are_refused_before_ray_starts(tmp_path, inference_dir, s3_bucket):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt.bak").write_text("not an image")
    storage.write_bytes(f"s3://{s3_bucket}/other/a.jpg", jpeg_bytes(random_image(8, 8)))
    cases = {
        str(tmp_path / "missing"): "does not exist; pass a folder",
        str(tmp_path / "empty"): "has no images or PDFs: looked for .jpg, .jpeg, .png",
        f"s3://{s3_bucket}/nothing-here/": "has no images or PDFs",
    }
    for spec, words in cases.items():
        code, stdout, lines = run_predict("--model-dir", inference_dir, "--input", spec, "--output", str(tmp_path / "out"))
        assert code == 1 and len(lines) == 1 and lines[0].startswith(f"error: input {spec!r} {words}"), lines
        assert "Ray" not in stdout  # refused before Ray started
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["no credentials", "unreachable endpoint"])
def test_s3_problems_are_one_line_naming_the_bucket_endpoint_and_settings(tmp_path, inference_dir, s3_server, case):
    from local_cluster import free_port

    env = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}  # nothing to find credentials in, and no metadata service
    if case == "no credentials":
        env.update(AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
        words = f"no AWS credentials to read or write s3://photos/in/ at {s3_server}; set AWS_ACCESS_KEY_ID"
    else:
        endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        env.update(AWS_ENDPOINT_URL=endpoint)
        words = f"cannot reach the S3 endpoint {endpoint} for s3://photos/in/; check AWS_ENDPOINT_URL"
    code, _, lines = run_predict("--model-dir", inference_dir, "--input", "s3://photos/in/", "--output", str(tmp_path / "out"), env=env)
    assert code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {words}"), lines[-30:]


@pytest.mark.slow
def test_retry_errors_runs_exactly_the_failed_inputs_again(tmp_path, inference_dir, image_dir, model, ray_local):
    out = tmp_path / "out"
    broken = image_dir / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    first = bulk(inference_dir, str(image_dir), str(out))
    assert (first["done"], first["errors"]) == (3, 1)
    broken.write_bytes(jpeg_bytes(random_image(40, 56, seed=4)))  # the user fixes the file
    again = bulk(inference_dir, str(image_dir), str(out))  # a plain rerun skips it, and says it was an error
    assert (again["processed_this_run"], again["skipped_already_done"], again["skipped_errors"], again["errors"]) == (0, 3, 1, 1)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    retried = bulk(inference_dir, str(image_dir), str(out), None, "Predict.retry_errors=true")
    assert (retried["processed_this_run"], retried["skipped_already_done"], retried["skipped_errors"]) == (1, 3, 0)
    assert (retried["inputs"], retried["done"], retried["errors"]) == (4, 4, 0)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # the done inputs were not redone
    assert (out / "_errors.jsonl").read_text() == ""
    manifest = read_jsonl((out / "_manifest.jsonl").read_text())
    assert sorted(m["status"] for m in manifest) == ["done"] * 4 and len({m["uri"] for m in manifest}) == 4
    assert_masks_match(model, str(out), [(str(broken), "broken")])


def test_the_summary_line_counts_done_and_errors_before_apart(capsys):
    from raysegment.cli import report_bulk

    code = report_bulk({"inputs": 4, "done": 3, "errors": 1, "processed_this_run": 0, "images_per_s": 0.0,
                        "skipped_already_done": 3, "skipped_errors": 1, "output": "out"})
    said = capsys.readouterr().out
    assert code == 3 and "3 done before, 1 errors before, not retried" in said and "--retry-errors" in said
