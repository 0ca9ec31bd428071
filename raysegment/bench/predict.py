"""predict: images/s of `create_model().predict` with save_to_img + save_to_json, against the bare
exported-model forward on pre-decoded, pre-normalised arrays (the compute limit), and the forward
speed of every paddle.inference CPU mode and of dygraph.
"""

import os

from .common import add_inputs, make_image_dir, model_folder, print_table, rate


def bench_predict(args, work):
    import numpy as np

    import raysegment

    from ..data.image import decode_image
    from ..infer.engines.paddle import LayerEngine, PaddleEngine, resolve_device
    from ..infer.engines.spec import CPU_RUN_MODES
    from ..infer.export import load_checkpoint

    model_dir, model_name = model_folder(args, work)
    images = make_image_dir(os.path.join(work, "images"), args.n)
    out_dir = os.path.join(work, "out")
    model = raysegment.create_model(model_dir=model_dir, device=args.device)
    predictor = model.predictor
    paths = sorted(os.path.join(images, f) for f in os.listdir(images))
    rgb = [decode_image(open(p, "rb").read(), p) for p in paths]
    batches = [np.stack([predictor.preprocess(img) for img in rgb[i : i + args.batch_size]]) for i in range(0, len(rgb), args.batch_size)]
    predictor.engine(batches[0])  # warm-up

    def end_to_end():
        for res in model.predict(images, batch_size=args.batch_size):
            res.save_to_img(out_dir)
            res.save_to_json(out_dir)

    def forward(engine):
        return lambda: [engine(b) for b in batches]

    rows = {"create_model().predict + save (end to end)": rate(end_to_end, args.n),
            "bare forward, pre-decoded (compute limit)": rate(forward(predictor.engine), args.n)}
    stages = {"read + decode only": rate(lambda: [decode_image(open(p, "rb").read(), p) for p in paths], args.n),
              "preprocess only": rate(lambda: [predictor.preprocess(img) for img in rgb], args.n)}
    modes = {}
    device = resolve_device(args.device)
    for mode in [m for m in CPU_RUN_MODES if m != predictor.engine.run_mode] if device[0] == "cpu" else []:
        try:
            engine = PaddleEngine(predictor.info.graph_file, predictor.info.params_file, device, mode)
            engine(batches[0])
            modes[f"paddle.inference {mode}"] = rate(forward(engine), args.n)
        except Exception as e:  # a mode that fails is a result to report, not a crash
            modes[f"paddle.inference {mode}"] = f"fails: {str(e).strip().splitlines()[0][:90]}"
    checkpoint = os.path.join(os.path.dirname(model_dir), "checkpoint")
    if os.path.isdir(checkpoint):
        engine = LayerEngine(load_checkpoint(checkpoint)[0], device)
        engine(batches[0])
        modes["dygraph (checkpoint)"] = rate(forward(engine), args.n)

    ratio = rows["create_model().predict + save (end to end)"] / rows["bare forward, pre-decoded (compute limit)"]
    shown = {name: "fails (below)" if isinstance(value, str) else value for name, value in {**rows, **stages, **modes}.items()}
    print_table(f"predict benchmark: {args.n} images {rgb[0].shape[1]}x{rgb[0].shape[0]}, batch {args.batch_size}, {model_name}, "
                f"run mode {predictor.engine.run_mode}, {os.cpu_count()} CPUs",
                ("measurement", "images/s"), [*shown.items(), ("ratio end-to-end / compute limit", ratio)])
    for name, value in modes.items():
        if isinstance(value, str):
            print(f"{name} {value}")
    return {"n": args.n, "batch_size": args.batch_size, "image_size": [rgb[0].shape[1], rgb[0].shape[0]], "model": model_name,
            "run_mode": predictor.engine.run_mode, "images_per_s": rows, "stages_images_per_s": stages,
            "forward_modes_images_per_s": modes, "ratio_end_to_end_over_limit": ratio}


def predict_arguments(p):
    add_inputs(p, n=100, batch_size=1, model=True)
    p.add_argument("--device", default="cpu")
