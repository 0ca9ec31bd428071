"""A real multi-node Ray cluster on this machine, made of `ray start` processes, as RAY_NOTES.md and
the README describe: a head and worker nodes that each run their own raylet, object store and
agents. Jobs go in through `ray job submit`, as a user's would; the test watches them through the
dashboard's REST API (job status, nodes, actors), with the cluster's token, rather than a `ray` CLI
process a second (each one ~1.5 s of CPU taken from the job on a 2-core machine). Every process it started is found
by its temp folder (the GCS, raylets, dashboard, monitors name it) and their children; `stop()`
ends those and nothing else (`ray stop` would end every Ray on the machine).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

from raysegment.bench.common import free_port, free_ports  # noqa: F401 (free_port: the tests' import)

BIN = os.path.dirname(sys.executable)  # ray, python: this virtualenv's


def _processes():
    """{pid: (ppid, argv)} of every process."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):
            continue
        found[int(pid)] = (ppid, argv)
    return found


def _with_descendants(roots, procs):
    out, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo += [p for p, (ppid, _) in procs.items() if ppid == pid]
    return out


class LocalCluster:
    def __init__(self, root, env=None):
        self.root = root  # --temp-dir: short, since Ray's socket paths must fit 107 bytes
        # TMPDIR: what the nodes' processes put in tempfile folders (a SIGKILLed node leaves its
        # multiprocessing pymp-* folder behind) lands in root, which stop() removes
        self.env = {**(env or os.environ), "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
                    "RAY_USAGE_STATS_ENABLED": "0", "TMPDIR": root}
        self.port, self.dashboard_port, self.client_port = free_ports(3)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.workers_started = 0

    def _ray_start(self, *args):
        # every agent port chosen here: two nodes on one machine must not share Ray's defaults
        # a small object store per node: Ray's default (30% of memory each) is sized for one node a machine
        listen, grpc, metrics, runtime_env = free_ports(4)
        ports = ["--object-store-memory", str(300 * 2**20), "--dashboard-agent-listen-port", str(listen),
                 "--dashboard-agent-grpc-port", str(grpc), "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env)]
        subprocess.run([f"{BIN}/ray", "start", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *ports, *args],
                       env=self.env, check=True, capture_output=True, timeout=120)

    def start(self, workers=3, cpus=1, gpus=0):
        self._ray_start("--head", "--num-cpus=0", f"--port={self.port}", f"--dashboard-port={self.dashboard_port}",
                        "--dashboard-host=127.0.0.1", f"--ray-client-server-port={self.client_port}", f"--temp-dir={self.root}")
        for _ in range(workers):
            self.add_worker(cpus, gpus)
        self.wait_for_nodes(workers + 1)
        return self

    def add_worker(self, cpus=1, gpus=0):
        # a temp folder of its own, as a separate machine would have: nodes that share one also
        # share runtime_resources/, and one node's clean-up deleted the job's unpacked working
        # directory from under another node's actors (FileNotFoundError from os.getcwd())
        self.workers_started += 1
        # gpus: GPUs the node declares (Ray hands them out and sets CUDA_VISIBLE_DEVICES; none need exist)
        self._ray_start(f"--address=127.0.0.1:{self.port}", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
                        f"--temp-dir={self.root}/n{self.workers_started}")

    def nodes(self):
        """[(node_id, raylet pid, CPUs)] of this cluster's live raylets."""
        out = []
        for pid, (_, argv) in _processes().items():
            if argv and argv[0].endswith("/raylet") and any(a.startswith(f"--temp_dir={self.root}") for a in argv):
                opts = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
                cpus = re.search(r"(?:^|,)CPU,([\d.]+)", opts.get("static_resource_list", ""))
                out.append((opts["node_id"], pid, float(cpus.group(1)) if cpus else 0.0))
        return out

    def wait_for_nodes(self, n, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if sum(node["state"] == "ALIVE" for node in self._listed("nodes")) >= n:
                    return
            except (OSError, ValueError):  # the dashboard is still starting
                pass
            time.sleep(1)
        raise TimeoutError(f"{n} nodes did not come up in {timeout} s")

    def api(self, path):
        """GET the dashboard's REST API at `path` with the cluster's token (Ray keeps it in ~/.ray/auth_token)."""
        with open(os.path.expanduser("~/.ray/auth_token"), encoding="utf-8") as f:
            token = f.read().strip()
        request = urllib.request.Request(self.address + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.load(resp)

    def _listed(self, kind):
        """The state API's records of `kind` (nodes, actors), dead ones included."""
        return self.api(f"/api/v0/{kind}?limit=10000&detail=1")["data"]["result"]["result"]

    def cli(self, *args, check=True, timeout=300):
        """`ray <args> --address <dashboard>` with the token, as the README tells users."""
        return subprocess.run([f"{BIN}/ray", *args, "--address", self.address], env=self.env, cwd=os.getcwd(), check=check,
                              capture_output=True, text=True, timeout=timeout)

    def submit(self, entrypoint, working_dir, no_wait=True, timeout=600):
        """`ray job submit --working-dir DIR [--no-wait] -- ENTRYPOINT`; returns the job id (no_wait)
        or the finished process."""
        args = [f"{BIN}/ray", "job", "submit", "--address", self.address, "--working-dir", working_dir,
                *(["--no-wait"] if no_wait else []), "--", *entrypoint]
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
        if not no_wait:
            return done
        match = re.search(r"Job '([^']+)' submitted successfully", done.stdout + done.stderr)
        assert match, done.stdout + done.stderr
        return match.group(1)

    def job_status(self, job_id):
        """SUCCEEDED, FAILED, STOPPED, or RUNNING (anything else the Jobs API says, or no answer)."""
        try:
            status = self.api(f"/api/jobs/{job_id}")["status"]
        except (OSError, ValueError, KeyError):  # the dashboard busy or restarting: ask again next time
            return "RUNNING"
        return status if status in ("SUCCEEDED", "FAILED", "STOPPED") else "RUNNING"

    def wait_job(self, job_id, timeout=600, poll=None):
        """Wait for a terminal status; `poll()` is called every second meanwhile. Returns (status, logs)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.job_status(job_id)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status, self.cli("job", "logs", job_id, check=False).stdout
            if poll:
                poll()
            time.sleep(1)
        raise TimeoutError(f"job {job_id} still {status} after {timeout} s:\n{self.cli('job', 'logs', job_id, check=False).stdout}")

    def actors(self, class_part):
        """[(node_id, state)] of the actors whose class name contains `class_part`, dead ones included."""
        return [(a["node_id"], a["state"]) for a in self._listed("actors") if class_part in a.get("class_name", "")]

    def kill_node(self, node_id):
        """SIGKILL a worker node's raylet and everything under it (its agents, workers and actors):
        the node is gone as if its machine had died."""
        procs = _processes()
        raylet = next(pid for nid, pid, _ in self.nodes() if nid == node_id)
        for pid in _with_descendants([raylet], procs):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self):
        """End every process this cluster started (found by its temp folder), and their children,
        then remove the folder."""
        procs = _processes()
        ours = [pid for pid, (_, argv) in procs.items() if any(self.root in a for a in argv) and pid != os.getpid()]
        pids = _with_descendants(ours, procs) - {os.getpid()}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(1)
        shutil.rmtree(self.root, ignore_errors=True)
