"""The GPU check: training (1 and 2 GPUs, AMP), the bulk job, Serve and every engine on GPU, in one
command and under 8 minutes, with one JSON of figures (raysegment/bench/gpu_check.py says what each
step runs). Set up the GPU machine as the README's GPU section says, then:

    python jobs/gpu_check.py                          # on the GPU machine: output/gpu_check.json
    python jobs/gpu_check.py --dry-run                # every step planned, sized and printed; nothing on CUDA
    python jobs/gpu_check.py --dry-run --gpus 2       # on a CPU machine: the plan for 2 GPUs (declared to Ray)
    python jobs/gpu_check.py --dry-run --address 127.0.0.1:6379   # placed on a running cluster's GPU nodes
    python jobs/gpu_check.py --steps train-2,serve    # only these steps (e.g. again, after fixing one)
    python jobs/gpu_check.py --device cpu --quick     # the same steps, small, on CPUs

A dry run places each step's Ray processes as the real step would (Ray Train workers, bulk actors,
Serve replicas), and each reports the GPU Ray gave it (CUDA_VISIBLE_DEVICES), its device, backend,
SyncBatchNorm, AMP and engine options, stopping where Paddle would first touch CUDA.
"""

import argparse

from raysegment.cli import run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="plan and place every step; run nothing on CUDA")
    p.add_argument("--device", choices=("gpu", "cpu"), help="default: gpu when Paddle finds one (or on --dry-run), else cpu")
    p.add_argument("--gpus", type=int, default=2, help="dry run on a machine without GPUs: GPUs the local Ray declares (default 2)")
    p.add_argument("--cpus", type=int, help="dry run on a machine without GPUs: CPUs the local Ray declares (default: this machine's, at least 4 a GPU)")
    p.add_argument("--address", help="a running Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--steps", help="comma-separated steps to run (engines, train-1, train-2, bulk, serve); default: all")
    p.add_argument("--out", default="output/gpu_check.json", help="where the JSON goes (default output/gpu_check.json)")
    args = p.parse_args(argv)
    if args.gpus < 1:
        p.error("--gpus must be at least 1")

    from raysegment.bench.gpu_check import STEP_NAMES
    from raysegment.bench.gpu_check import main as check

    unknown = sorted(set(args.steps.split(",")) - set(STEP_NAMES)) if args.steps else []
    if unknown:
        p.error(f"--steps: {', '.join(unknown)} is not a step; steps: {', '.join(STEP_NAMES)}")

    check(args)


if __name__ == "__main__":
    run(main)
