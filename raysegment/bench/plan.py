"""plan: seconds and driver memory (peak growth of its anonymous memory: heap, numpy, Arrow) of planning a bulk job over a URL list of N
inputs, half of them recorded by an earlier run: the streamed listing, the resume check and the
blocks put into the object store; then of merging the manifest as the commit does (N lines: the
earlier run's file and this run's part files, one per block).
"""

import json
import os

from .common import HeapPeak, Stopwatch, int_list, print_table


def _plan_worker(listing, out, results):
    """In a fresh process: plan the bulk job over `listing` into `out` (whose earlier records are
    skipped) with the blocks put in a local Ray's object store, then merge the records as the
    commit does; report seconds and the driver's peak heap growth."""
    import ray

    from ..batch import plan_blocks
    from ..bulk_output import BulkRun
    from ..data.sources import list_inputs

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    heap = HeapPeak()
    clock = Stopwatch()
    run = BulkRun(out)
    blocks, rows = plan_blocks(ray, run.plan(list_inputs(listing)), actors=2)
    plan_s, plan_mb = clock(), heap.growth()
    for ref in blocks:  # the job records each block's results as they arrive (one part file each)
        uris = ray.get(ref).column("uri").to_pylist()
        run.record((u, "done", [f"{u}.png", f"{u}.json"], "") for u in uris)
    clock = Stopwatch()
    summary = run.commit({})  # the merge of every recorded line, as the job's end does it
    results.put({"to_do": rows, "skipped": run.skipped_done, "blocks": len(blocks), "plan_s": plan_s, "plan_mb": plan_mb,
                 "merge_s": clock(), "merge_mb": heap.growth(), "merged_lines": summary["inputs"]})
    ray.shutdown()


def bench_plan(args, work):
    """Planning a bulk job of N inputs (a URL list of N lines), half of them recorded by an earlier
    run: seconds and driver memory of the plan (listing, resume check, blocks into the object
    store) and of merging the manifest (the earlier run's and this run's parts, one per block)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    rows, results = [], {}
    for n in args.sizes:
        listing, out = os.path.join(work, f"urls_{n}.txt"), os.path.join(work, f"out_{n}")
        with open(listing, "w") as f:
            f.writelines(f"http://127.0.0.1:9/camera-{i % 97:02d}/frame_{i:08d}.jpg\n" for i in range(n))
        os.makedirs(out)
        with open(os.path.join(out, "_manifest.jsonl"), "w") as f:  # an earlier run did every other input
            f.writelines(json.dumps({"uri": f"http://127.0.0.1:9/camera-{i % 97:02d}/frame_{i:08d}.jpg", "status": "done",
                                     "outputs": [f"127.0.0.1_9/camera-{i % 97:02d}/frame_{i:08d}.png",
                                                 f"127.0.0.1_9/camera-{i % 97:02d}/frame_{i:08d}.json"]}) + "\n" for i in range(0, n, 2))
        queue = ctx.Queue()
        proc = ctx.Process(target=_plan_worker, args=(listing, out, queue))
        proc.start()
        r = queue.get()
        proc.join()
        assert r["to_do"] == n // 2 and r["skipped"] == (n + 1) // 2 and r["merged_lines"] == n, r
        results[n] = r
        rows.append((f"{n:,}", r["to_do"], r["blocks"], r["plan_s"], round(r["plan_mb"]), r["merge_s"], round(r["merge_mb"])))
    print_table("bulk planning: N inputs in a URL list, half recorded by an earlier run (driver process)",
                ("inputs", "to do", "blocks", "plan s", "plan MB", "merge s", "merge MB"), rows)
    return {"sizes": results}


def plan_arguments(p):
    p.add_argument("--sizes", type=int_list, default=[10_000, 100_000, 1_000_000],
                   help="comma-separated input counts (default 10000,100000,1000000)")
