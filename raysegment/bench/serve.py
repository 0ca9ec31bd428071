"""serve: a closed-loop load test of the Serve app (a fresh local Ray) at 1, 8 and 32 concurrent
clients, with dynamic batching and without, bounded by --requests and --seconds per row:
requests/s, p50 and p99 latency, errors; beside the bulk job's images/s on the same images, and
the time to write a 2048x1024 labelMap as JSON.
"""

import json
import os
import re
import shutil

from .common import (
    Stopwatch,
    add_inputs,
    best_seconds,
    free_port,
    make_image_dir,
    model_folder,
    print_table,
    request_bodies,
    run_bulk_job,
    sample_paths,
)


def load_test(url, bodies, clients, max_requests, max_seconds, headers=({},), timeout_s=120):
    """Closed loop: `clients` threads, each with its own keep-alive connection, send the next body as
    soon as their previous answer is in (after a 503, once its Retry-After has passed, as a polite
    client does), until `max_requests` are sent or `max_seconds` pass. Request i carries
    headers[i % len(headers)] (e.g. a model id). Returns requests/s and p50/p99 latency (ms) of the
    successful answers, the count of the others (`errors`), and the answers by status: 200, 503,
    other statuses, and connection errors or timeouts ("no answer")."""
    import collections
    import http.client
    import itertools
    import threading
    import time
    from urllib.parse import urlparse

    import numpy as np

    host, port = urlparse(url).hostname, urlparse(url).port
    tickets, lock = itertools.count(), threading.Lock()
    latencies, errors, statuses, rejected = [], [], collections.Counter(), []
    clock = Stopwatch()

    def client():
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        while True:
            with lock:
                i = next(tickets)
            if i >= max_requests or clock() > max_seconds:
                break
            request, retry_after = Stopwatch(), None
            try:
                conn.request("POST", "/semantic-segmentation", bodies[i % len(bodies)],
                             {"Content-Type": "application/json", **headers[i % len(headers)]})
                resp = conn.getresponse()
                answer, status = resp.read(), resp.status
                retry_after = resp.getheader("Retry-After")
                # the envelope's errorCode: first in ours, last in PaddleX's
                ok = status == 200 and re.search(rb'"errorCode":\s*0[,}]', answer[:200] + answer[-200:]) is not None
            except OSError as e:
                ok, answer, status = False, repr(e).encode(), "no answer"
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
            with lock:
                (latencies if ok else errors).append(request() if ok else answer[:200])
                statuses[status] += 1
                if status == 503:
                    rejected.append((request(), retry_after))
            if status == 503 and retry_after:
                time.sleep(float(retry_after))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = clock()
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {"requests_per_s": len(latencies) / elapsed, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "errors": len(errors), "requests": len(latencies) + len(errors),
            "statuses": {str(k): v for k, v in statuses.items()},
            "p99_503_ms": float(np.percentile([r[0] for r in rejected], 99) * 1000) if rejected else None,
            "retry_after": sorted({r[1] for r in rejected}, key=str),
            "first_error": errors[0].decode(errors="replace") if errors else None}


def time_label_map_encoding(h=1024, w=2048, num_classes=19):
    """ms to write a label map as the JSON labelMap list: the app's orjson path and json.dumps(tolist())."""
    import numpy as np
    import orjson

    mask = np.random.default_rng(0).integers(0, num_classes, (h, w), dtype=np.int32)
    fast = best_seconds(lambda: orjson.dumps({"labelMap": mask.ravel()}, option=orjson.OPT_SERIALIZE_NUMPY), 3)
    slow = best_seconds(lambda: json.dumps({"labelMap": mask.ravel().tolist()}), 3)
    return fast * 1000, slow * 1000


def start_local_serve(cpus, request_timeout_s):
    """A fresh local Ray of `cpus` CPUs with Serve's proxy on a free 127.0.0.1 port; its base URL."""
    import ray
    from ray import serve

    port = free_port()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": request_timeout_s})
    return f"http://127.0.0.1:{port}"


def bench_serve(args, work):
    """Load test of the Serve app on a local Ray, batching on and off, plus the bulk job on the same images."""

    import ray
    from ray import serve

    from ..serve import build_app

    model_dir, model_name = model_folder(args, work)
    bodies = request_bodies(sample_paths())
    # the layout bench_bulk finds fastest on CPU: one single-thread replica (and bulk actor) per CPU
    cpus, batch_size = os.cpu_count(), args.batch_size
    bulk, _, _ = run_bulk_job(model_dir, make_image_dir(os.path.join(work, "images"), args.n), os.path.join(work, "bulk"), batch_size)
    url = start_local_serve(cpus, request_timeout_s=120)
    rows = {}
    for batch in (batch_size, 1):
        serve.run(build_app({"model_dir": model_dir, "max_batch_size": batch, "batch_wait_timeout_s": 0.01, "max_ongoing_requests": 64,
                             "num_replicas": cpus, "cpus_per_replica": 1, "threads_per_replica": 1}), name="bench", route_prefix="/")
        load_test(url, bodies, 2 * cpus, 4 * cpus, 60)  # warm-up: every replica's first forward pass
        for clients in (1, 8, 32):
            key = f"{f'batching (max {batch})' if batch > 1 else 'no batching'}, {clients} clients"
            rows[key] = load_test(url, bodies, clients, max(args.requests, 4 * clients), args.seconds)
    serve.shutdown()
    ray.shutdown()
    fast, slow = time_label_map_encoding()
    batched, unbatched = rows[f"batching (max {batch_size}), 32 clients"], rows["no batching, 32 clients"]
    ratios = {"batched_over_unbatched_32": batched["requests_per_s"] / unbatched["requests_per_s"],
              "batched_32_over_bulk": batched["requests_per_s"] / bulk["images_per_s"]}
    print_table(f"serve benchmark: POST /semantic-segmentation with base64 JPEGs 480x360, {cpus} replicas x 1 thread, "
                f"{cpus} CPUs, {model_name}; closed loop, at most {args.requests} requests or {args.seconds:g} s per row",
                ("setting", "req/s", "p50 ms", "p99 ms", "errors", "requests"),
                [(name, r["requests_per_s"], round(r["p50_ms"]), round(r["p99_ms"]), r["errors"], r["requests"]) for name, r in rows.items()]
                + [("bulk job, same images (images/s)", bulk["images_per_s"], "", "", "", "")])
    print(f"batched / unbatched at 32 clients: {ratios['batched_over_unbatched_32']:.3f}; "
          f"batched at 32 clients / bulk job: {ratios['batched_32_over_bulk']:.3f}")
    print(f"labelMap JSON for a 2048x1024 map: {fast:.1f} ms (orjson, as served) vs {slow:.0f} ms (json.dumps of .tolist())")
    return {"model": model_name, "rows": rows, "bulk_images_per_s": bulk["images_per_s"], **ratios,
            "label_map_encoding_ms": {"orjson": fast, "json_tolist": slow, "shape": [1024, 2048]}}


def bench_overload(args, work):
    """The default app (no options but the model) under a bounded overload: --clients closed-loop
    clients for --seconds against 32 clients, then one client right after. Every request should get
    a 200 or a fast 503 with Retry-After (clients wait that long before their next request), none
    a timeout or another status, and the 200s' p99 stay within 2x the 32-client p99."""

    import ray
    from ray import serve

    from ..config import ServeOptions
    from ..serve import build_app

    model_dir, model_name = model_folder(args, work)
    bodies = request_bodies(sample_paths(), visualize=False)
    defaults = ServeOptions()
    url = start_local_serve(os.cpu_count(), request_timeout_s=defaults.request_timeout_s)
    serve.run(build_app({"model_dir": model_dir}), name="bench", route_prefix="/")
    load_test(url, bodies, 4, 16, 120)  # warm-up: every replica's first forward pass
    rows = {"32 clients": load_test(url, bodies, 32, 10**6, args.seconds),
            f"{args.clients} clients": load_test(url, bodies, args.clients, 10**6, args.seconds),
            "1 client, right after": load_test(url, bodies, 1, 8, 60)}
    serve.shutdown()
    ray.shutdown()
    normal, overload, after = rows.values()
    checks = {"only 200 and 503 under overload": set(overload["statuses"]) <= {"200", "503"},
              "p99 of 200s within 2x the 32-client p99": overload["p99_ms"] <= 2 * normal["p99_ms"],
              "every answer right after is a 200": after["statuses"] == {"200": after["requests"]}}
    print_table(f"overload benchmark: the default app (max_ongoing_requests {defaults.max_ongoing_requests}, max_queued_requests "
                f"{defaults.max_queued_requests}, Retry-After {defaults.retry_after_s:g} s), {model_name}, {os.cpu_count()} CPUs, "
                f"POST /semantic-segmentation 480x360 JPEGs; closed loop, {args.seconds:g} s per row",
                ("clients", "200/s", "p50 ms", "p99 ms", "answers by status", "503 p99 ms"),
                [(name, r["requests_per_s"], round(r["p50_ms"]), round(r["p99_ms"]),
                  ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items())),
                  round(r["p99_503_ms"]) if r["p99_503_ms"] is not None else "") for name, r in rows.items()])
    for check, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {check}")
    return {"model": model_name, "rows": rows, "checks": checks,
            "settings": {"max_ongoing_requests": defaults.max_ongoing_requests, "max_queued_requests": defaults.max_queued_requests,
                         "retry_after_s": defaults.retry_after_s}}


def bench_multiplex(args, work):
    """Many models behind one Serve app: the first request for each model (it loads), requests/s on
    a loaded model, and requests/s cycling over the models with room for all of them on every
    replica, and with room for one (every switch a reload)."""

    import ray
    from ray import serve

    from ..serve import build_app

    model_dir, model_name = model_folder(args, work)
    models = {}
    for i in range(args.models):  # separate folders (ids), as fine-tuned copies would be
        models[f"site_{i}"] = shutil.copytree(model_dir, os.path.join(work, f"site_{i}"))
    bodies = request_bodies(sample_paths()[:1])
    cpus = os.cpu_count()
    url = start_local_serve(cpus, request_timeout_s=300)
    ids = sorted(models)
    every = [{"serve_multiplexed_model_id": m} for m in ids]
    rows, cold = {}, {}
    for room in (len(ids), 1):
        serve.run(build_app({"model_dir": model_dir, "models": models, "max_models_per_replica": room, "num_replicas": cpus,
                             "cpus_per_replica": 1, "threads_per_replica": 1, "max_batch_size": args.batch_size,
                             "max_ongoing_requests": 64}), name="bench", route_prefix="/")
        load_test(url, bodies, 1, 2, 120)  # the default model's first forward
        if room == len(ids):
            for m in ids:  # each model's first request on this app: it loads on a replica
                cold[m] = load_test(url, bodies, 1, 1, 300, [{"serve_multiplexed_model_id": m}])["p50_ms"]
            rows["one model, loaded (8 clients)"] = load_test(url, bodies, 8, args.requests, args.seconds, every[:1])
            rows[f"{len(ids)} models in turn, all resident (8 clients)"] = load_test(url, bodies, 8, args.requests, args.seconds, every)
        else:
            rows[f"{len(ids)} models in turn, 1 per replica (8 clients)"] = load_test(url, bodies, 8, args.requests, args.seconds, every)
        serve.delete("bench")
    serve.shutdown()
    ray.shutdown()
    hot = rows["one model, loaded (8 clients)"]
    print_table(f"many models: {len(ids)} copies of {model_name} behind one app, {cpus} replicas x 1 thread, POST "
                "/semantic-segmentation with serve_multiplexed_model_id, 480x360 JPEG",
                ("setting", "req/s", "p50 ms", "p99 ms", "errors", "requests"),
                [(name, r["requests_per_s"], round(r["p50_ms"]), round(r["p99_ms"]), r["errors"], r["requests"]) for name, r in rows.items()])
    print("first request for each model (it loads on a replica): " + ", ".join(f"{m} {ms:.0f} ms" for m, ms in cold.items())
          + f"; a loaded model's p50 {hot['p50_ms']:.0f} ms at 8 clients")
    return {"model": model_name, "models": len(ids), "cold_first_request_ms": cold, "rows": rows}


def serve_arguments(p):
    add_inputs(p, n=200, batch_size=4, model=True)
    p.add_argument("--requests", type=int, default=120, help="most requests per row")
    p.add_argument("--seconds", type=float, default=40, help="most seconds per row")


def multiplex_arguments(p):
    add_inputs(p, batch_size=4, model=True)
    p.add_argument("--models", type=int, default=3, help="model ids (copies of the model folder; default 3)")
    p.add_argument("--requests", type=int, default=120, help="most requests per row")
    p.add_argument("--seconds", type=float, default=30, help="most seconds per row")


def overload_arguments(p):
    add_inputs(p, model=True)
    p.add_argument("--clients", type=int, default=256, help="concurrent clients of the overload row (default 256)")
    p.add_argument("--seconds", type=float, default=30, help="seconds per row (default 30)")
