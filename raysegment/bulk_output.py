"""The bulk job's output protocol: what one run writes, how a rerun resumes, how a run is committed.

For an input at `a/b/img.jpg` under its root, in OUT (a local folder or an s3:// prefix):

    OUT/a/b/img.png          label map: palette PNG of class ids (data/labels.py), lossless
    OUT/a/b/img.json         source URI, size, model, class names, per-class pixel counts, timings
    OUT/a/b/img_vis.jpg      overlay with a legend of the classes present (Predict.save_visualization)
    OUT/a/doc_0.png ...      a PDF's pages, each as an image, named by page index (0, 1, ...) as
                             PaddleX names them; its JSON says page_index; one manifest line for the PDF
    OUT/_manifest.jsonl      one line per input: uri, status (done | error), outputs
    OUT/_errors.jsonl        uri, error type, message
    OUT/_SUCCESS.json        counts, throughput, model, config

Every file is written whole (temporary name + rename locally, one PUT on S3), an image's JSON last.
While a run goes on, manifest and error lines go to OUT/_parts/ (one file per batch of results, as
they arrive), so a killed run loses at most the batch in flight; `commit` merges the parts into
the two .jsonl files. A rerun skips every input already listed, done or error (with
`retry_errors`, only those done: the errors run again and their newest record wins): each input
appears exactly once. Any sink that can `read_bytes` / `write_bytes` / `list_files` / `delete` (storage.py)
can hold a run.
"""

import itertools
import json
import os
import shutil
import time
import uuid

import numpy as np

from . import storage
from .data.image import encode_image
from .data.labels import default_class_names, encode_label_png, pixel_counts
from .data.visualize import overlay_with_legend

MANIFEST, ERRORS, SUCCESS, PARTS = "_manifest.jsonl", "_errors.jsonl", "_SUCCESS.json", "_parts"


class ImageWriter:
    """Writes one image's outputs; each predictor actor holds one, so label maps never travel
    through Ray's object store."""

    def __init__(self, output, model_name, class_names, visualize=False):
        self.output, self.model_name, self.class_names, self.visualize = output, model_name, class_names, visualize

    def write(self, uri, rel, image, mask, timings, page_index=None):
        """Mask PNG, overlay, then JSON (last: its presence means the others are whole); returns
        the output names relative to OUT."""
        stem = os.path.splitext(rel)[0]
        files = [f"{stem}.png", f"{stem}.json"]
        storage.write_bytes(storage.join(self.output, files[0]), encode_label_png(mask))
        names = self.class_names or default_class_names(int(mask.max(initial=0)) + 1)
        if self.visualize:
            files.append(f"{stem}_vis.jpg")
            storage.write_bytes(storage.join(self.output, files[2]), encode_image(overlay_with_legend(image, mask, names)))
        meta = {"uri": str(uri), "width": int(mask.shape[1]), "height": int(mask.shape[0]), "model": self.model_name,
                "mask": os.path.basename(files[0]), "class_names": names, "pixel_counts": pixel_counts(mask, self.class_names),
                "timings_s": timings, **({"page_index": page_index} if page_index is not None else {})}
        storage.write_bytes(storage.join(self.output, files[1]), json.dumps(meta).encode())
        return files


CHUNK = 20_000  # inputs planned (and handed to Ray Data) at a time


class _Seen:
    """A set of strings kept as 64-bit hashes in one sorted numpy array: 8 bytes an entry, so a
    million done inputs cost 8 MB in the driver rather than the URIs themselves (~150 MB as
    Python strings). Python's str hash is fixed within a process, which is all a plan needs; two
    of a million inputs share a 64-bit hash with odds of about 3e-8."""

    def __init__(self):
        self.sorted = np.empty(0, np.int64)

    def contains(self, hashes):
        if not len(self.sorted):
            return np.zeros(len(hashes), bool)
        i = np.minimum(np.searchsorted(self.sorted, hashes), len(self.sorted) - 1)
        return self.sorted[i] == hashes

    def add(self, hashes):
        # a stable sort of int64 is a radix sort in numpy: linear, where np.union1d's hash-based
        # unique took 35 s over a million inputs
        merged = np.sort(np.concatenate([self.sorted, hashes]), kind="stable")
        self.sorted = merged[_run_starts(merged)]


def _run_starts(ranked):
    """Mask of the first element of each run of equal values in a sorted array."""
    return np.concatenate(([True], ranked[1:] != ranked[:-1]))[: len(ranked)]


def _first_of_each(hashes):
    """Mask of the first occurrence of each hash, in order."""
    order = np.argsort(hashes, kind="stable")  # equal hashes keep their order: the first comes first
    keep = np.zeros(len(hashes), bool)
    keep[order[_run_starts(hashes[order])]] = True
    return keep


class BulkRun:
    """The run-level records of one output folder or prefix. Everything here streams: the inputs,
    the records of earlier runs and the merge hold a few bytes per input, never every line.
    retry_errors: inputs recorded as errors are planned again (after the broken file was fixed)."""

    def __init__(self, output, retry_errors=False):
        self.output, self.retry_errors = output, retry_errors

    def _path(self, name):
        return storage.join(self.output, name)

    def _parts(self, kind):
        if not storage.is_s3(self.output) and not os.path.isdir(self._path(PARTS)):
            return []
        return [p for p in storage.list_files(self._path(PARTS), (".jsonl",)) if p.rsplit("/", 1)[-1].startswith(f"{kind}-")]

    def _records(self, kind):
        """Every recorded line of `kind` ("manifest" | "errors"), oldest first: the merged file,
        then the parts in the order they were written."""
        merged = self._path(MANIFEST if kind == "manifest" else ERRORS)
        for uri in ([merged] if storage.exists(merged) else []) + self._parts(kind):
            for line in storage.iter_lines(uri):
                if line.strip():
                    yield json.loads(line)

    def plan(self, items):
        """Inputs (dicts with `uri` and `rel`, any iterable) -> lists of those still to do, CHUNK at
        a time. Inputs already recorded (done, and errors unless retry_errors) and repeated inputs
        are dropped, counted in `self.skipped_done` / `self.skipped_errors`; an input whose outputs
        would overwrite another's (a.jpg and a.png) is recorded here as an OutputCollision error
        (counted in `self.collisions`)."""
        self.collisions = 0
        done, failed, stems = _Seen(), _Seen(), _Seen()
        recorded = ((m["uri"], m["status"], os.path.splitext(m["outputs"][0])[0] if m["outputs"] else None)
                    for m in self._records("manifest"))
        for block in _batched(recorded, CHUNK):
            done.add(np.array([hash(u) for u, status, _ in block if status == "done"], np.int64))
            failed.add(np.array([hash(u) for u, status, _ in block if status != "done"], np.int64))
            stems.add(np.array([hash(st) for _, _, st in block if st is not None], np.int64))
        failed.sorted = failed.sorted[~done.contains(failed.sorted)]  # done on a retry: done
        self.skipped_done, self.skipped_errors = len(done.sorted), 0 if self.retry_errors else len(failed.sorted)
        if not self.retry_errors:
            done.add(failed.sorted)
        for block in _batched(items, CHUNK):
            uris = np.array([hash(item["uri"]) for item in block], np.int64)
            rels = np.array([hash(os.path.splitext(item["rel"])[0]) for item in block], np.int64)
            new = ~done.contains(uris) & _first_of_each(uris)
            done.add(uris)
            clash = new & (stems.contains(rels) | ~_first_of_each(np.where(new, rels, uris)))
            todo = [item for item, keep in zip(block, new & ~clash) if keep]
            stems.add(rels[new & ~clash])
            self.record((item["uri"], "error", [], f"OutputCollision: its outputs {os.path.splitext(item['rel'])[0]}.png/.json "
                         "are another input's (same name, other extension, or the same URL path); rename one of them")
                        for item, hit in zip(block, clash) if hit)
            self.collisions += int(clash.sum())
            if todo:
                yield todo

    def record(self, results):
        """Append one batch of (uri, status, outputs, error) to the run's parts. `error` is
        '' or 'Type: message'."""
        lines, errors = [], []
        for uri, status, outputs, error in results:
            lines.append({"uri": str(uri), "status": str(status), "outputs": list(outputs)})
            if error:
                kind, _, message = str(error).partition(": ")
                errors.append({"uri": str(uri), "error": kind, "message": message})
        self._write_part("manifest", lines)
        self._write_part("errors", errors)

    def _write_part(self, kind, lines):
        if lines:
            name = f"{PARTS}/{kind}-{time.time_ns()}-{uuid.uuid4().hex[:6]}.jsonl"
            storage.write_bytes(self._path(name), "".join(json.dumps(x) + "\n" for x in lines).encode())

    def _merge(self, kind, only=None):
        """Write the merged file of `kind`, one line per input: its newest record (a retried error
        is replaced by its new outcome; a rerun after a kill between the merge and the parts'
        removal sees some lines twice). `only`: a _Seen of the URIs to keep. Returns (lines, lines
        with status done, a _Seen of the URIs whose line is an error). Two streamed passes: hashes
        first, then the lines kept."""
        hashes = np.fromiter((hash(r["uri"]) for r in self._records(kind)), np.int64)
        keep = _first_of_each(hashes[::-1])[::-1]  # the last record of each URI
        if only is not None:
            keep &= only.contains(hashes)
        counts, failed = [0, 0], []

        def lines():
            for record, wanted in zip(self._records(kind), keep):
                if wanted:
                    counts[0] += 1
                    if record.get("status") == "done":
                        counts[1] += 1
                    elif kind == "manifest":
                        failed.append(hash(record["uri"]))
                    yield json.dumps(record)

        storage.write_lines(self._path(MANIFEST if kind == "manifest" else ERRORS), lines())
        errors = _Seen()
        errors.add(np.array(failed, np.int64))
        return counts[0], counts[1], errors

    def commit(self, summary):
        """Merge the parts into _manifest.jsonl and _errors.jsonl (each written whole; an error
        retried to done leaves _errors.jsonl), remove the parts, and write _SUCCESS.json: `summary`
        plus the run's input, done and error counts."""
        inputs, done, failed = self._merge("manifest")
        self._merge("errors", only=failed)
        for part in self._parts("manifest") + self._parts("errors"):
            storage.delete(part)
        if not storage.is_s3(self.output):  # also a killed run's half-written temporary files, merged by no one
            shutil.rmtree(self._path(PARTS), ignore_errors=True)
        summary = {"inputs": inputs, "done": done, "errors": inputs - done, **summary}
        storage.write_bytes(self._path(SUCCESS), json.dumps(summary, indent=2).encode())
        return summary


def _batched(iterable, n):
    it = iter(iterable)
    while block := list(itertools.islice(it, n)):
        yield block
