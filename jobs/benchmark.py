"""Benchmarks (raysegment/bench/): each subcommand prints a table and writes JSON; figures are ratios measured in one run.

    python jobs/benchmark.py predict                       # 100 bundled-size images (360x480)
    python jobs/benchmark.py predict --n 200 --batch-size 4 --model-dir output/best_model/inference
    python jobs/benchmark.py precision --dataset-dir ../shared/data/camvid   # fp32, bf16, int8: img/s, val mIoU
    python jobs/benchmark.py train                         # 256x256 crops, batch 4 per worker
    python jobs/benchmark.py train --dataset-dir ../shared/data/camvid --iters 40 -c configs/SegFormer-B0.yaml
    python jobs/benchmark.py bulk                          # 200 and 2000 images
    python jobs/benchmark.py plan                          # planning 10k, 100k, 1M inputs
    python jobs/benchmark.py serve                         # 1, 8, 32 clients, batching on and off
    python jobs/benchmark.py overload --model-dir raysegment/data/models/PP-LiteSeg-T_camvid   # 256 clients: 200 or 503
    python jobs/benchmark.py multiplex --model-dir raysegment/data/models/PP-LiteSeg-T_camvid   # 3 models, one app
    python jobs/benchmark.py slide                         # 2048, 4096, 10000 px squares: slide mode against whole-image
    python jobs/benchmark.py models                        # all 20 models: params, GFLOPs, CPU images/s
    python jobs/benchmark.py models --models SeaFormer_tiny,PP-LiteSeg-T --size 512
    python jobs/benchmark.py paddlex --paddlex-python /tmp/pdx/bin/python --images ../shared/data/camvid/images
    python jobs/benchmark.py paddlex-serve --paddlex-python /tmp/pdx/bin/python   # after `paddlex --install serving`

What each measures is in its module's docstring (raysegment/bench/<name>.py).
"""

from raysegment.bench import main
from raysegment.cli import run

if __name__ == "__main__":
    run(main)
