"""What every benchmark shares: one clock, one table, the inputs (bundled frames, an untrained
model, a small dataset), the bulk job run as a user runs it, and process-tree memory."""

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from ..data import SAMPLES

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(os.path.dirname(PACKAGE), "configs")  # a source checkout's configs/ and jobs/
JOBS = os.path.join(os.path.dirname(PACKAGE), "jobs")


class Stopwatch:
    """The one clock of the benchmarks (time.perf_counter): stopwatch() is the seconds since it was made."""

    def __init__(self):
        self.started = time.perf_counter()

    def __call__(self):
        return time.perf_counter() - self.started


def _server_port_range():
    """Ports for servers started later (Serve's proxy, a PaddleX server, a `ray start` node): above
    Ray's worker ports (10002-19999) and below the kernel's ephemeral range, which every socket bound
    to port 0 draws from. A port found free by binding port 0 lies in that range, and one of Ray's
    own gRPC servers (bound to port 0 as the node starts) can take it before our server listens:
    a CI run's Serve test read a gRPC reply as its HTTP status line."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    return range(20000, ephemeral_low) if ephemeral_low > 21000 else None


def free_ports(n):
    """n distinct 127.0.0.1 ports free now and outside the ranges Ray and the kernel hand out
    (`_server_port_range`); each socket stays bound until all are chosen, so none repeats."""
    ports = _server_port_range()
    candidates = random.sample(ports, len(ports)) if ports else []
    socks = []
    try:
        for port in candidates:
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            socks.append(sock)
            if len(socks) == n:
                break
        while len(socks) < n:  # no range outside the ephemeral one: the kernel's choice
            socks.append(socket.socket())
            socks[-1].bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port():
    return free_ports(1)[0]


def best_seconds(fn, repeats=2):
    """Seconds of fn(), best of `repeats` (the machine is shared; the best run is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        clock = Stopwatch()
        fn()
        best = min(best, clock())
    return best


def rate(fn, n, repeats=2):
    """Items per second of fn() handling `n` items, best of `repeats`."""
    return n / best_seconds(fn, repeats)


def print_table(title, header, rows, decimals=2):
    """A titled table: the first column left-aligned, the rest right-aligned, floats rounded."""
    def cell(v):
        return f"{v:.{decimals}f}" if isinstance(v, float) else str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in [list(header)] + cells) for i in range(len(header))]
    print(f"\n{title}")
    for row in [list(header)] + cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def sample_paths():
    """The bundled CamVid frames (raysegment/data/samples), in name order."""
    return sorted(os.path.join(SAMPLES, f) for f in os.listdir(SAMPLES) if f.endswith(".jpg"))


def request_bodies(paths, **fields):
    """One JSON body of PaddleX's serving protocol per image file: base64 image plus `fields`."""
    import base64

    bodies = []
    for path in paths:
        with open(path, "rb") as f:
            bodies.append(json.dumps({"image": base64.b64encode(f.read()).decode(), **fields}).encode())
    return bodies


def make_image_dir(folder, n):
    """n JPEGs of one size, cycling through the bundled CamVid samples."""
    samples = sample_paths()
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        shutil.copyfile(samples[i % len(samples)], os.path.join(folder, f"img_{i:05d}.jpg"))
    return folder


def model_folder(args, work, model_name="PP-LiteSeg-T", num_classes=11):
    """(inference folder, model name): --model-dir, or an untrained model exported here (with its
    checkpoint beside it, for the dygraph row)."""
    from ..infer.model_files import read_model_folder

    if args.model_dir:
        return args.model_dir, read_model_folder(args.model_dir).model_name
    import paddle

    from ..data.labels import default_class_names
    from ..infer import export_model, save_checkpoint
    from ..models import build_model

    paddle.seed(0)
    layer = build_model(model_name, num_classes)
    names = default_class_names(num_classes)
    save_checkpoint(layer, os.path.join(work, "model", "checkpoint"), model_name, names)
    return export_model(layer, os.path.join(work, "model", "inference"), model_name, names), f"untrained {model_name}"


def make_train_dir(folder, n, num_classes=11):
    """A SegDataset from the bundled images with random block labels (speed does not depend on them)."""
    import cv2
    import numpy as np

    from ..data.labels import default_class_names

    samples = sample_paths()
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    os.makedirs(os.path.join(folder, "annotations"), exist_ok=True)
    lines = []
    for i in range(n):
        shutil.copyfile(samples[i % len(samples)], os.path.join(folder, "images", f"{i}.jpg"))
        label = np.kron(rng.integers(0, num_classes, (9, 12)), np.ones((40, 40))).astype(np.uint8)  # 360 x 480
        cv2.imwrite(os.path.join(folder, "annotations", f"{i}.png"), label)
        lines.append(f"images/{i}.jpg annotations/{i}.png")
    for split, part in (("train", lines), ("val", lines[:4])):
        with open(os.path.join(folder, f"{split}.txt"), "w") as f:
            f.write("\n".join(part) + "\n")
    with open(os.path.join(folder, "labels.txt"), "w") as f:
        f.write("".join(f"{name}\n" for name in default_class_names(num_classes)))
    return folder


def tree_processes(root_pid):
    """[(pid, name, RSS, PSS)] of a process and all its descendants, from /proc (bytes). RSS counts a
    page shared by several processes (libraries, the object store) once per process; PSS divides
    it among them, so the PSS sum is what the job takes from the machine."""
    children, found = {}, []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(pid))
        except (OSError, IndexError, ValueError):
            pass
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                fields = {line.split(":")[0]: int(line.split()[1]) for line in f if line.split()[-1] == "kB"}
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except (OSError, ValueError, IndexError):
            continue
        found.append((pid, _process_name(argv), fields.get("Rss", 0) * 1024, fields.get("Pss", 0) * 1024))
    return found


def _process_name(argv):
    """'ray::MapWorker(...)' as Ray titles its workers, else the script or program run."""
    if argv[0].startswith("ray::"):
        return argv[0].split()[0]
    script = next((a for a in argv[1:] if a.endswith(".py")), None)
    modules = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"]
    return os.path.basename(script or (modules[0] if modules else argv[0]))


def tree_memory(root_pid):
    """(RSS, PSS) in bytes summed over a process and all its descendants (tree_processes)."""
    found = tree_processes(root_pid)
    return sum(p[2] for p in found), sum(p[3] for p in found)


def run_measured(cmd, env=None):
    """Run `cmd` to its end, sampling its process tree's memory every 0.2 s: (seconds, peak RSS sum,
    peak PSS sum, the processes at the peak RSS sum as [(name, RSS MB, PSS MB)], largest first).
    A RuntimeError with its last lines of stderr when it fails."""
    clock, peak, at_peak = Stopwatch(), [0, 0], []
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty job would fill a pipe and stall
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        while proc.poll() is None:
            found = tree_processes(proc.pid)
            rss, pss = sum(p[2] for p in found), sum(p[3] for p in found)
            if rss > peak[0]:
                at_peak = sorted(((name, round(r / 2**20), round(p / 2**20)) for _, name, r, p in found), key=lambda x: -x[1])
            peak = [max(peak[0], rss), max(peak[1], pss)]
            time.sleep(0.2)
        seconds = clock()
        if proc.returncode:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {proc.returncode}:\n" + "\n".join(tail))
    return seconds, peak[0], peak[1], at_peak


def run_bulk_job(model_dir, images, out, batch_size, layout=None):
    """The bulk job (jobs/predict.py) in a fresh process (its own local Ray): with no tuning flags (layout None:
    the actors, CPUs and threads it sizes itself), or `layout` = (actors, threads per actor), each
    actor reserving an equal share of the CPUs. Returns (summary, peak RSS sum, peak PSS sum)."""
    cpus = os.cpu_count()
    cmd = [sys.executable, os.path.join(JOBS, "predict.py"), "--model-dir", model_dir, "--input", images, "--output", out,
           "-o", f"Predict.batch_size={batch_size}"]
    if layout:
        actors, threads = layout
        cmd += ["-o", f"Ray.predict_concurrency={actors}", "-o", f"Ray.cpus_per_actor={cpus / actors:g}",
                "-o", f"Ray.threads_per_actor={threads}"]
    _, peak_rss, peak_pss, _ = run_measured(cmd)
    with open(os.path.join(out, "_SUCCESS.json")) as f:
        return json.load(f), peak_rss, peak_pss


class HeapPeak:
    """Peak of this process's anonymous memory (heap, numpy, Arrow; not the object store's shared
    pages that ray.put maps in), sampled every 10 ms from /proc/self/smaps_rollup, in MB."""

    def __init__(self):
        import threading

        self.peak, self.base, self._stop = 0.0, self.now(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def now():
        with open("/proc/self/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Anonymous:")) / 1024

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.now())

    def growth(self):
        """Peak so far above the level at start, MB."""
        self.peak = max(self.peak, self.now())
        return self.peak - self.base


def add_inputs(p, n=None, batch_size=None, model=False):
    """The options several benchmarks share: image count, forward batch, model folder."""
    if n:
        p.add_argument("--n", type=int, default=n, help=f"number of images (default {n})")
    if batch_size:
        p.add_argument("--batch-size", type=int, default=batch_size, help=f"images per forward (default {batch_size})")
    if model:
        p.add_argument("--model-dir", help="exported inference folder (default: an untrained PP-LiteSeg-T, 11 classes)")


def int_list(text):
    return [int(x) for x in text.split(",")]
