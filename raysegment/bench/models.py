"""models: for every registered model (or --models), parameters, GFLOPs of one forward
(raysegment.models.flops) and CPU images/s of the exported model on every engine (plain Paddle,
oneDNN, ONNX Runtime, OpenVINO fp32 and bf16) with each one's pixel agreement with plain Paddle,
batch 1, all CPU threads, in one run.
"""

import json
import os

from ..data import SAMPLES
from .common import Stopwatch, print_table


def forward_rate(engine, x, seconds):
    """images/s of engine(x) (batch 1) over at least 3 runs and `seconds`, after a warm-up run."""
    engine(x)
    runs, clock = 0, Stopwatch()
    while runs < 3 or clock() < seconds:
        engine(x)
        runs += 1
    return runs / (clock())


def bench_models(args, work):
    """Per model: size, GFLOPs, and every CPU engine's images/s and pixel agreement with plain Paddle
    on a bundled CamVid frame resized to --size (real content: few near-ties between classes)."""
    import cv2
    import paddle

    from ..data.image import decode_image
    from ..data.labels import default_class_names
    from ..infer import export_model
    from ..infer.engines.conversion import ConversionError, onnx_file
    from ..infer.engines.paddle import PaddleEngine
    from ..infer.engines.runtimes import OnnxRuntimeEngine, OpenVinoEngine
    from ..infer.model_files import read_model_folder
    from ..models import MODELS, build_model
    from ..models.flops import count_gmacs
    from ..ray_env import process_cpus

    names = args.models.split(",") if args.models else list(MODELS)
    size, threads = args.size, process_cpus()
    sample = sorted(os.listdir(SAMPLES))[0]
    frame = cv2.resize(decode_image(open(os.path.join(SAMPLES, sample), "rb").read()), (size, size), interpolation=cv2.INTER_LINEAR)
    x = ((frame.astype("float32") / 255 - 0.5) / 0.5).transpose(2, 0, 1)[None]

    def onnx(info):
        try:
            return onnx_file(info)
        except ConversionError:  # PP-LiteSeg: static shapes only
            return onnx_file(info, (size, size))

    engines = {  # plain Paddle first: the reference
        "paddle": lambda info: PaddleEngine(info.graph_file, info.params_file, ("cpu", None), "paddle", threads),
        "mkldnn": lambda info: PaddleEngine(info.graph_file, info.params_file, ("cpu", None), "mkldnn", threads),
        "onnxruntime": lambda info: OnnxRuntimeEngine(onnx(info), ("cpu", None), threads),
        "openvino": lambda info: OpenVinoEngine(onnx(info), threads),
        "openvino_bf16": lambda info: OpenVinoEngine(onnx(info), threads, "bf16"),
    }
    timed = args.engines.split(",") if args.engines else list(engines)
    rows = {}
    for name in names:
        paddle.seed(0)
        layer = build_model(name, 11)
        row = {"params_m": round(sum(int(p.size) for p in layer.parameters() if not p.stop_gradient) / 1e6, 2),
               "weights_mb": round(sum(int(v.size) * 4 for v in layer.state_dict().values()) / 2**20, 1),
               "gflops": round(count_gmacs(layer, size), 2), "images_per_s": {}, "agreement_with_paddle": {}}
        info = read_model_folder(export_model(layer, os.path.join(work, name), name, default_class_names(11)))
        masks = {}
        for mode, make in engines.items():
            try:
                engine = make(info)
                masks[mode] = engine(x)
                row["agreement_with_paddle"][mode] = float((masks[mode] == masks["paddle"]).mean())
                # an engine not timed still runs once: plain Paddle's mask is the reference
                row["images_per_s"][mode] = round(forward_rate(engine, x, args.seconds_per_model), 3) if mode in timed else "not timed"
                del engine
            except Exception as e:  # an engine that cannot run a model is a result, not a crash
                row["images_per_s"][mode] = f"fails: {str(e).strip().splitlines()[0][:90]}"
        rows[name] = row
        print(name, json.dumps(row), flush=True)  # one line as each model finishes
        del layer
    modes = [m for m in engines if m in timed]
    print_table(f"models benchmark: {size}x{size} CamVid frame, batch 1, CPU, {threads} threads, untrained weights",
                ("model", "params (M)", "GFLOPs", *(f"{m} img/s" for m in modes), *(f"{m} = paddle" for m in modes if m != "paddle")),
                [(name, r["params_m"], r["gflops"], *(r["images_per_s"][m] if isinstance(r["images_per_s"][m], float) else "fails"
                                                       for m in modes),
                  *(f"{r['agreement_with_paddle'][m]:.4%}" if m in r["agreement_with_paddle"] else "-" for m in modes if m != "paddle"))
                 for name, r in rows.items()])
    return {"size": size, "cpu_threads": threads, "image": sample, "models": rows}


def models_arguments(p):
    p.add_argument("--models", help="comma-separated names (default: every registered model)")
    p.add_argument("--size", type=int, default=512, help="square input size")
    p.add_argument("--seconds-per-model", type=float, default=5.0, help="timing budget per model (at least 3 runs)")
    p.add_argument("--engines", help="comma-separated engines to time (default: paddle,mkldnn,onnxruntime,openvino,openvino_bf16); "
                                     "plain Paddle always runs once, as the reference")
