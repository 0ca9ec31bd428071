"""INT8 post-training quantization of a converted ONNX file, opt-in (engine_config.precision=int8),
calibrated on images the user names (engine_config.calibration_images: a SegDataset folder, whose train
split is taken, or an image folder, glob or list file)
and cached beside the fp32 file, so each machine quantizes a model once.

ONNX Runtime's static quantization writes a QDQ graph (int8 weights per channel, uint8 activations
from min/max ranges seen on the calibration images) that both ONNX Runtime and OpenVINO run with
integer kernels. CPUs without VNNI (AVX2 only) saturate the u8 x s8 products, so there weights use
7 bits (reduce_range): measured on an AVX2 EPYC with the bundled model at 960x720, 88% of pixels
kept fp32's label with 8 bits, 99% with 7. The first convolution (it sees the image) and the last
(it makes the class scores) stay fp32, as is usual: on the same model, mIoU against fp32's masks
went from 0.935 to 0.971 for 4% of the speed (1.58x fp32 instead of 1.60x).

Every eighth image is held out of calibration and checked: int8's masks are scored against fp32's
(mIoU with fp32's labels as ground truth). Below 1 - MIOU_MARGIN, or when quantization fails, the
model is not quantized (the reason is cached as `.failed`, like a failed conversion) and the caller
runs fp32 with one log line. Quantizing runs in a child process (its calibration holds ~1 GB of
activations at 960x720, which a bulk actor should not keep):

    python -m raysegment.infer.engines.quantize MODEL_DIR FP32.onnx OUT.onnx HEIGHT WIDTH IMAGES.txt MARGIN
"""

import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile
import time

from ...storage import file_lock
from .conversion import run_child

MIOU_MARGIN = 0.05  # int8 must keep mIoU >= 0.95 against fp32's masks on the held-out images
MIN_IMAGES = 16
MAX_IMAGES = 300  # spread evenly over what the user names
HOLD_OUT_EVERY = 8
QUANTIZE_TIMEOUT_S = 1800
QUANTIZER_REVISION = 2  # bump when quantize() changes, so cached files and failures are redone


class QuantizationError(RuntimeError):
    pass


def calibration_uris(images):
    """The images `images` names (a SegDataset folder: its train split; else anything the bulk job
    takes: folder, glob, list file), at most MAX_IMAGES spread evenly; a ValueError when there are
    fewer than MIN_IMAGES."""
    from ...data.dataset import Sample, iter_split
    from ...data.sources import list_inputs
    from ...storage import IMAGE_SUFFIXES

    if os.path.isfile(os.path.join(images, "train.txt")):
        uris = sorted(s.image for s in iter_split(images, "train") if isinstance(s, Sample))
    else:
        uris = sorted(item["uri"] for item in list_inputs(images) if item["uri"].lower().endswith(IMAGE_SUFFIXES))
    if len(uris) < MIN_IMAGES:
        raise ValueError(f"calibration_images {images!r} holds {len(uris)} images; int8 calibration needs at least "
                                f"{MIN_IMAGES} (a few hundred training images is best)")
    step = max(len(uris) / MAX_IMAGES, 1)
    return [uris[int(i * step)] for i in range(min(len(uris), MAX_IMAGES))]


def reduce_range():
    """7-bit weights unless the CPU has VNNI or AMX integer dot products."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return True
    return not any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def int8_file(fp32_path, model_dir, shape, uris):
    """Path of the int8 ONNX file for `fp32_path` calibrated on `uris` (calibration_uris) resized
    to `shape`, quantizing it on first use; QuantizationError says why when it cannot or loses too much."""
    digest = hashlib.sha256("\n".join(uris).encode())
    for uri in uris:
        stat = os.stat(uri) if os.path.isfile(uri) else None
        digest.update(f"{stat and stat.st_size} {stat and stat.st_mtime_ns}".encode())
    digest.update(f"{importlib.metadata.version('onnxruntime')} {reduce_range()} {MIOU_MARGIN} {QUANTIZER_REVISION}".encode())
    path = f"{fp32_path.removesuffix('.onnx')}_int8_{digest.hexdigest()[:12]}.onnx"
    failed = path + ".failed"
    with file_lock(path + ".lock"):  # actors on one machine quantize once, the others wait for it
        if not os.path.isfile(path) and not os.path.isfile(failed):
            _quantize_in_child(model_dir, fp32_path, path, shape, uris, failed)
    if os.path.isfile(failed):
        with open(failed, encoding="utf-8") as f:
            raise QuantizationError(f.read())
    return path


def report(int8_path):
    """What quantizing found: images calibrated and checked, mIoU and pixel agreement against fp32."""
    with open(int8_path + ".json", encoding="utf-8") as f:
        return json.load(f)


def _quantize_in_child(model_dir, fp32_path, path, shape, uris, failed):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write("\n".join(uris))
    cmd = [sys.executable, "-m", __name__, model_dir, fp32_path, path, *map(str, shape), f.name, str(MIOU_MARGIN)]
    try:
        ok, lines = run_child(cmd, path, QUANTIZE_TIMEOUT_S)
    finally:
        os.unlink(f.name)
    if not ok and not os.path.isfile(failed):  # the child writes its own verdict when the check fails
        with open(failed, "w", encoding="utf-8") as f:
            f.write(f"int8 quantization of {model_dir} failed: {(lines[-1] if lines else 'no output')[:300]}")


def quantize(model_dir, fp32_path, path, shape, uris, margin=MIOU_MARGIN):
    """Calibrate on all but every HOLD_OUT_EVERY-th of `uris`, check int8 against fp32 on those, and
    write `path` and its report (path.json), or path.failed when the check fails."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ...data import transforms as T
    from ...data.image import decode_image
    from ...data.metrics import ConfusionMatrix
    from ...storage import read_bytes
    from ..model_files import read_model_folder
    from .runtimes import OnnxRuntimeEngine

    info = read_model_folder(model_dir)
    (mean, std), interp = info.normalize, (info.resize or {}).get("interp", "LINEAR")

    def batch(uri):
        img = decode_image(read_bytes(uri), uri)
        return T.normalize_to_chw(img, mean, std, (shape[1], shape[0]), interp)[None]

    held_out = uris[HOLD_OUT_EVERY - 1::HOLD_OUT_EVERY]
    calibration = [uri for i, uri in enumerate(uris, start=1) if i % HOLD_OUT_EVERY]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = map(batch, calibration)

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"x": x}

    started = time.perf_counter()
    prepared = path + ".pre.onnx"
    try:
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        convs = [node.name for node in onnx.load(prepared).graph.node if node.op_type == "Conv"]  # in graph order
        # ranges are folded every few images: the activations of all of them would not fit in memory
        flush = next(n for n in range(8, 16) if len(calibration) % n)  # ORT fails on an empty last flush
        quantize_static(prepared, path + ".tmp", Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range(),
                        nodes_to_exclude=[convs[0], convs[-1]] if convs else None,
                        extra_options={"CalibMaxIntermediateOutputs": flush})
    finally:
        if os.path.exists(prepared):
            os.unlink(prepared)
    fp32, int8 = OnnxRuntimeEngine(fp32_path), OnnxRuntimeEngine(path + ".tmp")
    cm, agree = ConfusionMatrix(info.num_classes), []
    for uri in held_out:
        x = batch(uri)
        want, got = fp32(x), int8(x)
        cm.update(got, want)
        agree.append(float((got == want).mean()))
    miou = cm.metrics()["mIoU"]
    found = {"calibrated": len(calibration), "checked": len(held_out), "miou_vs_fp32": round(miou, 4),
             "pixel_agreement": round(float(np.mean(agree)), 4), "reduce_range": reduce_range(),
             "seconds": round(time.perf_counter() - started, 1)}
    if miou < 1 - margin:
        os.unlink(path + ".tmp")
        with open(path + ".failed", "w", encoding="utf-8") as f:
            f.write(f"int8 kept mIoU {miou:.3f} against fp32's masks on {len(held_out)} held-out calibration images, "
                    f"below {1 - margin:.2f}")
        return found
    with open(path + ".json", "w", encoding="utf-8") as f:
        json.dump(found, f)
    os.replace(path + ".tmp", path)
    return found


if __name__ == "__main__":
    model_dir, fp32_path, out, h, w, listing, margin = sys.argv[1:8]
    with open(listing, encoding="utf-8") as f:
        print(json.dumps(quantize(model_dir, fp32_path, out, (int(h), int(w)), f.read().split("\n"), float(margin))))
