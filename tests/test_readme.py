"""The README's quickstarts, run from the README's own text as a user runs them on a fresh clone
(after the README's first command), and the docs site built with --strict."""

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from local_cluster import _processes, _with_descendants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
BIN = os.path.dirname(sys.executable)


def quickstarts():
    """{title: the first bash block under each ### heading of the README's Quickstarts section}."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text.split("\n## Quickstarts\n", 1)[1].split("\n## ", 1)[0]
    blocks = {}
    for part in section.split("\n### ")[1:]:
        title, body = part.split("\n", 1)
        blocks[title.strip()] = re.search(r"```bash\n(.*?)```", body, re.S).group(1)
    return blocks


# Two things differ from a user's terminal, each as the README says to handle it:
# - `ray stop` ends every Ray process on the machine, this suite's own included: here it is a no-op and
#   the test stops the cluster the quickstart started (its processes name its --temp-dir) by pid;
# - a `ray job submit` sent while the fresh head's agent still starts is answered "No available agent
#   to submit job, please try again later" (Ray waits 10 s for it; a loaded 2-core machine takes
#   longer): it is sent again, up to 5 times, as the README tells users.
PRELUDE = """
ray() {
    if [ "$1" = stop ]; then return 0; fi
    if [ "$1 $2" = "job submit" ]; then
        for try in 1 2 3 4 5; do
            command ray "$@" > /tmp/ray-quickstart-submit.log 2>&1 && status=0 || status=$?
            cat /tmp/ray-quickstart-submit.log
            grep -q "No available agent to submit job" /tmp/ray-quickstart-submit.log || return $status
            sleep 5
        done
        return $status
    fi
    command ray "$@"
}
"""
QUICKSTART_TEMP = "/tmp/ray-quickstart"

EXPECTED = {
    "Bulk prediction over an S3 prefix": (["4 inputs: 4 done, 0 errors"], []),
    "Serve, and one request": (['"model":"PP-LiteSeg-T"', "SIGTERM: service shut down"], []),
    "Train with `ray job submit`": (["iter 10/10 loss", "val mIoU", "succeeded"], ["output/demo_train/train_result.json",
                                                                               "output/demo_train/best_model/inference/inference.json"]),
    "The pipeline CLI": (['"class_names"'], ["output/pipeline/0016E5_07959_res.jpg", "output/pipeline/0016E5_07959_res.json"]),
}


def test_the_readme_has_the_quickstarts_this_test_runs():
    assert set(quickstarts()) == set(EXPECTED)
    with open(README, encoding="utf-8") as f:
        assert len(f.read().splitlines()) < 300


@pytest.mark.slow
@pytest.mark.parametrize("title", EXPECTED)
def test_quickstart_runs_as_written(title):
    words, files = EXPECTED[title]
    for path in files:  # as on a fresh clone: nothing from an earlier run
        shutil.rmtree(os.path.join(ROOT, path.split("/")[0], path.split("/")[1]), ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env["PATH"] = f"{BIN}:{env['PATH']}"  # `ray` as the activated virtualenv has it
    proc = subprocess.Popen(["bash", "-e", "-c", PRELUDE + quickstarts()[title]], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=540)
    finally:
        _stop(proc)
    assert proc.returncode == 0, out[-5000:]
    for word in words:
        assert word in out, out[-5000:]
    for path in files:
        assert os.path.isfile(os.path.join(ROOT, path)), path


def _stop(proc):
    """End what the quickstart left running: its process group (servers it put in the background)
    and the Ray cluster it started under QUICKSTART_TEMP."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    procs = _processes()
    started = [pid for pid, (_, argv) in procs.items() if QUICKSTART_TEMP in argv]
    for pid in _with_descendants(started, procs):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(QUICKSTART_TEMP, ignore_errors=True)


def test_docs_build_strict_and_a_broken_link_fails_it(tmp_path):
    mkdocs = os.path.join(BIN, "mkdocs")
    done = subprocess.run([mkdocs, "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for page in ("index", "bulk", "serving", "training", "benchmarks", "models"):
        assert (tmp_path / "site" / page / "index.html").exists() or page == "index"
    copy = tmp_path / "copy"
    shutil.copytree(os.path.join(ROOT, "docs"), copy / "docs")
    shutil.copy(os.path.join(ROOT, "mkdocs.yml"), copy)
    with open(copy / "docs" / "bulk.md", "a") as f:
        f.write("\nSee [the missing page](missing.md#nowhere).\n")
    broken = subprocess.run([mkdocs, "build", "--strict", "-d", str(tmp_path / "site2")], cwd=copy, capture_output=True, text=True)
    assert broken.returncode != 0 and "missing.md" in broken.stderr


PATH = re.compile(r"(?<![\w/.$-])((?:raysegment|jobs|configs|cluster|tests|docs)/[\w./-]*\w)")


def test_every_file_the_readme_and_docs_name_exists():
    """Paths in the README and the docs (a sample image, a config, a job) are the repository's."""
    missing = []
    for doc in [README] + [os.path.join(ROOT, "docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")]:
        with open(doc, encoding="utf-8") as f:
            text = f.read()
        for path in set(PATH.findall(text)):
            if not os.path.exists(os.path.join(ROOT, path)):
                missing.append(f"{os.path.relpath(doc, ROOT)}: {path}")
    assert missing == []
