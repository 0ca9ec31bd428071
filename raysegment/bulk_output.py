"""The bulk job's output protocol: what one run writes, how a rerun resumes, how a run is committed.

For an input at `a/b/img.jpg` under its root, in OUT (a local folder or an s3:// prefix):

    OUT/a/b/img.png          label map: palette PNG of class ids (data/labels.py), lossless
    OUT/a/b/img.json         source URI, size, model, class names, per-class pixel counts, timings
    OUT/a/b/img_vis.jpg      overlay (Predict.save_visualization)
    OUT/_manifest.jsonl      one line per input: uri, status (done | error), outputs
    OUT/_errors.jsonl        uri, error type, message
    OUT/_SUCCESS.json        counts, throughput, model, config

Every file is written whole (temporary name + rename locally, one PUT on S3), an image's JSON last.
While a run goes on, manifest and error lines go to OUT/_parts/ (one file per batch of results, as
they arrive), so a killed run loses at most the batch in flight; `commit` merges the parts into
the two .jsonl files. A rerun skips every input already listed, done or error: each input appears
exactly once. Any sink that can `read_bytes` / `write_bytes` / `list_files` / `delete` (storage.py)
can hold a run.
"""

import json
import os
import time
import uuid

from . import storage
from .data.image import encode_image
from .data.labels import default_class_names, encode_label_png, pixel_counts
from .data.visualize import overlay

MANIFEST, ERRORS, SUCCESS, PARTS = "_manifest.jsonl", "_errors.jsonl", "_SUCCESS.json", "_parts"


class ImageWriter:
    """Writes one image's outputs; each predictor actor holds one, so label maps never travel
    through Ray's object store."""

    def __init__(self, output, model_name, class_names, visualize=False):
        self.output, self.model_name, self.class_names, self.visualize = output, model_name, class_names, visualize

    def write(self, uri, rel, image, mask, timings):
        """Mask PNG, overlay, then JSON (last: its presence means the others are whole); returns
        the output names relative to OUT."""
        stem = os.path.splitext(rel)[0]
        files = [f"{stem}.png", f"{stem}.json"]
        storage.write_bytes(storage.join(self.output, files[0]), encode_label_png(mask))
        if self.visualize:
            files.append(f"{stem}_vis.jpg")
            storage.write_bytes(storage.join(self.output, files[2]), encode_image(overlay(image, mask, ignore_index=-1)))
        names = self.class_names or default_class_names(int(mask.max(initial=0)) + 1)
        meta = {"uri": str(uri), "width": int(mask.shape[1]), "height": int(mask.shape[0]), "model": self.model_name,
                "mask": os.path.basename(files[0]), "class_names": names, "pixel_counts": pixel_counts(mask, self.class_names),
                "timings_s": timings}
        storage.write_bytes(storage.join(self.output, files[1]), json.dumps(meta).encode())
        return files


class BulkRun:
    """The run-level records of one output folder or prefix."""

    def __init__(self, output):
        self.output = output

    def _path(self, name):
        return storage.join(self.output, name)

    def _parts(self):
        if not storage.is_s3(self.output) and not os.path.isdir(self._path(PARTS)):
            return []
        return storage.list_files(self._path(PARTS), (".jsonl",))

    def previous(self):
        """(manifest lines, error lines) already recorded: merged files and unmerged parts."""
        manifest, errors = [], []
        for name, into in ((MANIFEST, manifest), (ERRORS, errors)):
            if storage.exists(self._path(name)):
                into += _read_jsonl(self._path(name))
        for part in self._parts():
            (errors if part.rsplit("/", 1)[-1].startswith("errors-") else manifest).extend(_read_jsonl(part))
        return manifest, errors

    def plan(self, items):
        """Inputs (dicts with `uri` and `rel`) -> (those still to do, how many were recorded before).

        Inputs already recorded and repeated inputs are dropped; an input whose outputs would
        overwrite another's (a.jpg and a.png) is recorded here as an OutputCollision error."""
        manifest, _ = self.previous()
        seen = {m["uri"] for m in manifest}
        owners = {os.path.splitext(m["outputs"][0])[0]: m["uri"] for m in manifest if m["outputs"]}  # output stem -> input
        todo, collisions = [], []
        for item in items:
            if item["uri"] in seen:
                continue
            seen.add(item["uri"])
            stem = os.path.splitext(item["rel"])[0]
            if stem in owners:
                collisions.append((item["uri"], "error", [],
                                   f"OutputCollision: its outputs {stem}.png/.json would overwrite those of {owners[stem]}; rename one of them"))
                continue
            owners[stem] = item["uri"]
            todo.append(item)
        self.record(collisions)
        return todo, len(manifest), len(collisions)

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

    def commit(self, summary):
        """Merge the parts into _manifest.jsonl and _errors.jsonl (each written whole), remove the
        parts, and write _SUCCESS.json: `summary` plus the run's input, done and error counts."""
        manifest, errors = self.previous()
        by_uri = {m["uri"]: m for m in manifest}  # a rerun after a kill between part and merge: keep one line
        errs = {e["uri"]: e for e in errors}
        storage.write_bytes(self._path(MANIFEST), "".join(json.dumps(m) + "\n" for m in by_uri.values()).encode())
        storage.write_bytes(self._path(ERRORS), "".join(json.dumps(e) + "\n" for e in errs.values()).encode())
        for part in self._parts():
            storage.delete(part)
        if not storage.is_s3(self.output) and os.path.isdir(self._path(PARTS)):
            os.rmdir(self._path(PARTS))
        done = sum(m["status"] == "done" for m in by_uri.values())
        summary = {"inputs": len(by_uri), "done": done, "errors": len(by_uri) - done, **summary}
        storage.write_bytes(self._path(SUCCESS), json.dumps(summary, indent=2).encode())
        return summary


def _read_jsonl(uri):
    return [json.loads(line) for line in storage.read_bytes(uri).decode("utf-8").splitlines() if line.strip()]
