"""Which engine runs an exported folder: what the user asked (spec.EngineSpec), and the default,
which per input shape runs the fastest installed engine whose masks equal Paddle's. Every choice
made here follows one rule: a candidate serves only where it runs and labels at least
AGREEMENT of the pixels as its reference does.

    engine       what runs                                   precisions
    paddle       paddle.inference: oneDNN or plain on CPU    fp32; bf16 (oneDNN, run_mode mkldnn_bf16)
    onnxruntime  ONNX Runtime (CPU; CUDA/TensorRT on GPU)    fp32; fp16 (GPU, TensorRT); int8 (CPU)
    openvino     OpenVINO (CPU)                              fp32; bf16 (AMX / AVX-512-BF16); int8

bf16, fp16 and int8 are opt-in (engine_config.precision): their masks differ from Paddle's fp32 on
some pixels, and the share is logged. int8 runs a graph quantized on the user's calibration images
(quantize.py); when quantizing fails or loses more than its margin, fp32 runs, said in one log line.

Unpinned, the first batch of each input shape runs on Paddle (its answer is returned) and on each
installed candidate; a candidate whose label maps differ from Paddle's on more than 0.1% of the
pixels is dropped, and the fastest of the rest serves that shape from then on. The choice is kept
beside the ONNX files (per folder, shape, device, threads, request and runtime versions), so a
process that loads the model again on this machine (a restarted replica, the next bulk actor)
takes it without the race and without building the Paddle engine at all. Pinned, the one engine
serves every shape once it runs the model and (in fp32) gives Paddle's masks; otherwise Paddle does,
after one warning line. The choice and its reason are `run_mode` and `reason`, which the bulk
job's _SUCCESS.json and Serve's /ready report.

Paddle itself (the reference, or the engine when engine=paddle) runs on oneDNN ("mkldnn": 5.7x
plain Paddle for PP-LiteSeg-T at 360x480 on 2 cores, Paddle 3.2.2) once oneDNN has given plain
Paddle's masks on a probe image; otherwise, or when oneDNN fails (Paddle 3.3.0-3.3.1 fail on every
interpolation op), plain Paddle runs, and says why (`paddle_engine`).
"""

import functools
import json
import logging
import os
import time

import numpy as np

from ...ray_env import process_cpus
from ...storage import file_lock
from . import runtimes
from .conversion import ConversionError, cache_dir, folder_key, onnx_file
from .paddle import PaddleEngine, error_line
from .paddle import config_calls as paddle_config_calls
from .quantize import QuantizationError, calibration_uris, int8_file

log = logging.getLogger(__name__)

AGREEMENT = 0.999  # share of pixels a candidate must label as its reference does

# Graphs paddle2onnx converts only at a static input size (PP-LiteSeg) get one ONNX file per input
# shape; past this many shapes a model runs the rest on Paddle.
MAX_STATIC_SHAPES = 4


def open_engine(info, device, spec):
    """The engine for an exported folder on `device` ('cpu', None) | ('gpu', N)."""
    check_device(device, spec)
    threads = spec.cpu_threads or process_cpus()
    if spec.engine == "paddle" or spec.run_mode:
        return paddle_engine(info, device, spec.paddle_run_mode, threads)
    return ChosenEngine(info, device, spec, threads)


def check_device(device, spec):
    """A ValueError when `spec` cannot run on `device`."""
    if device[0] == "cpu" and spec.precision == "fp16":
        raise ValueError("precision fp16 needs a GPU; on CPU use fp32 or bf16")
    if device[0] == "gpu" and spec.precision in ("bf16", "int8"):
        raise ValueError(f"precision {spec.precision} is a CPU mode here; on GPU use fp32 or fp16")
    if device[0] == "gpu" and (spec.engine == "openvino" or spec.run_mode):
        what = f"engine {spec.engine}" if spec.engine == "openvino" else f"run_mode {spec.run_mode}"
        raise ValueError(f"{what} runs on CPUs; on GPU use engine paddle or onnxruntime, or leave it unset")


def candidates(device, spec):
    """The runtimes that run beside Paddle on `device` for `spec`: the pinned one, else the installed
    ones that take the precision (on GPU, ONNX Runtime's CUDA and TensorRT providers)."""
    if spec.engine:
        return [spec.engine]
    if device[0] == "gpu":
        return ["onnxruntime"] if runtimes.installed("onnxruntime") else []
    if spec.precision == "bf16":
        return ["openvino"]
    return [name for name in ("openvino", "onnxruntime") if runtimes.installed(name)]


def engine_plan(device, spec, threads, available_providers=None):
    """What open_engine would open on `device` for `spec`, with nothing loaded and nothing on CUDA:
    one dict per engine, Paddle first (the engine when pinned, else the reference the others are
    checked against) with its Config calls, then each runtime with its execution providers (ONNX
    Runtime, given `available_providers`: None asks the installed onnxruntime) or compile
    properties (OpenVINO). A runtime that could not open says why under "error"."""
    check_device(device, spec)
    threads = spec.cpu_threads or threads
    pinned_paddle = spec.engine == "paddle" or bool(spec.run_mode)
    mode = "gpu" if device[0] == "gpu" else spec.paddle_run_mode or "mkldnn"
    paddle = {"engine": "paddle", "role": "engine" if pinned_paddle else "reference", "mode": mode,
              "config": paddle_config_calls(mode, device, threads)}
    if device[0] == "cpu" and not spec.paddle_run_mode:
        paddle["fallback"] = "paddle (when oneDNN's masks differ from plain Paddle's on the probe, or it fails)"
    plans = [paddle]
    for name in [] if pinned_paddle else candidates(device, spec):
        plan = {"engine": name, "role": "engine" if spec.engine else "candidate", "precision": spec.precision,
                "graph": "int8 (quantized on calibration_images)" if spec.precision == "int8" else "fp32 ONNX"}
        try:
            if name == "openvino":
                plan.update(device="CPU", properties=runtimes.openvino_properties(spec.precision, threads))
            else:
                if available_providers is None:
                    import onnxruntime

                    available_providers = onnxruntime.get_available_providers()
                plan["providers"] = runtimes.onnxruntime_providers(device, spec.precision, available_providers)
        except RuntimeError as e:
            plan["error"] = str(e)
        plans.append(plan)
    return plans


def paddle_engine(info, device, run_mode, threads):
    """Paddle on `device`: the pinned `run_mode`, or (None) oneDNN when it gives plain Paddle's
    masks on the probe, else plain Paddle, with the reason."""
    files = (info.graph_file, info.params_file)
    if device[0] == "gpu":
        return PaddleEngine(*files, device, "gpu", threads, reason="GPU device")
    if run_mode:
        try:
            engine = PaddleEngine(*files, device, run_mode, threads)
            engine.probe(_probe_batch())
            return engine
        except Exception as e:  # Paddle raises several types from its C++ side
            raise RuntimeError(f"run_mode {run_mode!r} cannot run {os.path.dirname(info.graph_file)}: "
                               f"{error_line(e)}; leave run_mode unset to pick one that can") from e
    plain = PaddleEngine(*files, device, "paddle", threads)
    try:
        fast = PaddleEngine(*files, device, "mkldnn", threads)
        agreement = _agreement(fast.probe(_probe_batch()), plain.probe(_probe_batch()))
    except Exception as e:  # Paddle raises several types from its C++ side
        agreement, failure = None, error_line(e)
    if agreement is not None and agreement >= AGREEMENT:
        engine, fast.reason, fast.fallback = fast, f"oneDNN gave plain Paddle's masks on the probe ({agreement:.2%})", "paddle"
    else:
        why = f"oneDNN fails ({failure})" if agreement is None else f"oneDNN agreed with plain Paddle on only {agreement:.2%} of the probe"
        engine, plain.reason = plain, f"{why}; running plain Paddle"
    log.info("%s: run mode %s: %s", os.path.dirname(info.graph_file), engine.run_mode, engine.reason)
    return engine


def _agreement(candidate, reference):
    return float((candidate == reference).mean())


@functools.cache
def _probe_batch(h=96, w=128):
    """A fixed smooth image (blobs, not noise: few near-ties between classes), normalised as models take it."""
    rng = np.random.default_rng(0)
    small = rng.uniform(-1, 1, (1, 3, h // 16, w // 16)).astype(np.float32)
    return np.ascontiguousarray(np.kron(small, np.ones((1, 1, 16, 16), np.float32)))


class ChosenEngine:
    def __init__(self, info, device, spec, threads):
        self.info, self.device, self.spec, self.threads = info, device, spec, threads
        self.candidates = candidates(device, spec)
        self.by_shape, self.notes = {}, {}  # (h, w) -> engine, its reason
        self._runtimes, self._onnx = {}, {}  # (engine name, onnx path) -> runtime; shape | None -> path or error
        self._int8 = {}  # fp32 onnx path -> its int8 file, or None where fp32 runs instead
        self.int8_fallback = None  # why int8 was asked for and fp32 runs
        self._calibration = calibration_uris(spec.calibration_images) if spec.precision == "int8" else None
        self._paddle = None
        if not self.candidates:
            self.notes[None] = "no onnxruntime/openvino (with paddle2onnx) installed; Paddle runs every shape"

    @property
    def paddle(self):
        """The Paddle engine: the reference every candidate is checked against, made on first need."""
        if self._paddle is None:
            self._paddle = paddle_engine(self.info, self.device, self.spec.paddle_run_mode, self.threads)
        return self._paddle

    @property
    def run_mode(self):
        names = sorted({engine.name for engine in self.by_shape.values()})
        return ", ".join(names) or "chosen at the first input of each shape"

    @property
    def reason(self):
        return "; ".join(self.notes.values()) or f"candidates: {', '.join(self.candidates)}, each checked against Paddle"

    @property
    def reasons(self):
        return list(self.notes.values()) or [self.reason]

    def __call__(self, batch):
        shape = batch.shape[2:]
        engine = self.by_shape.get(shape)
        if engine is None:
            engine = self._checked_before(shape)
        if engine is not None:
            return engine(batch)
        # one race per machine and shape: the other processes (bulk actors, replicas starting
        # together) wait for its verdict and load only the winner, not three engines each
        verdict = self._verdict_file(shape)
        os.makedirs(os.path.dirname(verdict), exist_ok=True)
        with file_lock(f"{verdict}.lock"):
            engine = self._checked_before(shape, "chosen just now by another process on this machine")
            return engine(batch) if engine is not None else self._choose(batch)

    def _verdict_file(self, shape):
        """Where this machine keeps the choice for this folder, shape, device, threads and request."""
        versions = "_".join(runtimes.runtime_version(name) for name in ("onnxruntime", "openvino"))
        device = self.device[0] if self.device[1] is None else f"{self.device[0]}{self.device[1]}"
        tag = f"{shape[0]}x{shape[1]}_{device}_{self.threads}t_{self.spec.engine or 'auto'}_{self.spec.precision}"
        return os.path.join(cache_dir(), f"{folder_key(self.info)}_{tag}_{versions}.choice.json")

    def _checked_before(self, shape, how="chosen earlier on this machine"):
        """The engine this machine chose for this shape (a Serve replica or bulk actor that starts
        again, or that waited while a sibling raced, skips the race and the Paddle reference), or
        None. `how` says which, in the note."""
        try:
            with open(self._verdict_file(shape), encoding="utf-8") as f:
                verdict = json.load(f)
            name = verdict["engine"]
            engine = self.paddle if name.startswith("paddle:") else self._runtime(name.split(":")[0], shape)
        except Exception:  # none yet, unreadable, or a runtime that no longer loads here: choose again
            return None
        self.by_shape[shape], self.notes[shape] = engine, f"{verdict['note']} ({how})"
        log.info("%s: %s", os.path.dirname(self.info.graph_file), self.notes[shape])
        return engine

    def _choose(self, batch):
        shape = batch.shape[2:]
        reference = self.paddle
        answer = reference(batch)
        timings, runs, remarks = {}, {reference.name: reference}, []  # remarks: what was dropped, and why
        for name in self.candidates:
            try:
                engine = self._runtime(name, shape)
                agreement = _agreement(engine(batch), answer)
            except Exception as e:  # conversion, compilation or run failures, from several libraries
                remarks.append(f"{name} cannot run it ({error_line(e)})")
                continue
            opted_in = engine.precision != "fp32"
            if agreement < AGREEMENT and not opted_in:
                remarks.append(f"{engine.name} gave Paddle's label on only {agreement:.2%} of the pixels")
                continue
            runs[engine.name] = engine
            if opted_in:
                remarks.append(f"{engine.name} agrees with Paddle fp32 on {agreement:.2%} of the pixels")
        if self.int8_fallback:
            remarks.append(self.int8_fallback)
        opted = [name for name, engine in runs.items() if getattr(engine, "precision", "fp32") != "fp32"]
        if self.spec.engine and len(runs) > 1:  # pinned, and it runs: no race
            best = next(name for name in runs if name != reference.name)
        else:  # an opted-in precision races among its own engines, not against Paddle fp32
            timings = {name: _best_seconds(runs[name], batch) for name in opted or runs}
            best = min(timings, key=timings.get)
        self.by_shape[shape] = runs[best]
        timed = ", ".join(f"{name} {1000 * t:.1f} ms" for name, t in sorted(timings.items(), key=lambda kv: kv[1]))
        what = "the pinned engine" if self.spec.engine else \
            f"the fastest {self.spec.precision} engine (opt-in)" if opted else "the fastest engine whose masks equal Paddle's"
        note = f"input {shape[0]}x{shape[1]}: {best}, {what}" + (f" ({timed})" if timed else "") + "".join(f"; {r}" for r in remarks)
        self.notes[shape] = note
        self._release_unused()
        _write_json(self._verdict_file(shape), {"engine": best, "note": note})
        pinned_lost = self.spec.engine and best == reference.name
        (log.warning if pinned_lost else log.info)("%s: %s", os.path.dirname(self.info.graph_file), note)
        return answer

    def _release_unused(self):
        """Drop the engines that serve no shape: each holds its own copy of the weights and buffers
        (a process that raced three engines kept ~300 MB it never used). The Paddle reference is
        made again if a new input shape needs it."""
        serving = {id(engine) for engine in self.by_shape.values()}
        self._runtimes = {key: engine for key, engine in self._runtimes.items() if id(engine) in serving}
        if self._paddle is not None and id(self._paddle) not in serving:
            self._paddle = None

    def _runtime(self, name, shape):
        path, precision = self._onnx_path(shape), self.spec.precision
        if precision == "int8":
            path, precision = self._int8_path(path, shape)
        if (name, path) not in self._runtimes:
            if name == "openvino":
                self._runtimes[name, path] = runtimes.OpenVinoEngine(path, self.threads, precision)
            else:
                self._runtimes[name, path] = runtimes.OnnxRuntimeEngine(path, self.device, self.threads, precision)
        return self._runtimes[name, path]

    def _int8_path(self, fp32_path, shape):
        """(the int8 file quantized from `fp32_path`, "int8"), or (fp32_path, "fp32") when quantizing
        fails or loses more than its margin: said once, in one warning line."""
        if fp32_path not in self._int8:
            try:
                self._int8[fp32_path] = int8_file(fp32_path, os.path.dirname(self.info.graph_file), shape, self._calibration)
            except QuantizationError as e:
                self._int8[fp32_path], self.int8_fallback = None, f"{e}; running fp32"
                log.warning("%s: %s", os.path.dirname(self.info.graph_file), self.int8_fallback)
        return (self._int8[fp32_path], "int8") if self._int8[fp32_path] else (fp32_path, "fp32")

    def _onnx_path(self, shape):
        """The dynamic-shape ONNX file when paddle2onnx takes the model so, else this shape's."""
        for key in (None, shape):
            if key not in self._onnx:
                if key is not None and sum(k is not None for k in self._onnx) >= MAX_STATIC_SHAPES:
                    raise ConversionError(f"this model converts only per input shape and already has {MAX_STATIC_SHAPES}; "
                                          "give the job one Predict.target_size to keep every input on the fast engines")
                try:
                    self._onnx[key] = onnx_file(self.info, key)
                except ConversionError as e:
                    self._onnx[key] = e
            if not isinstance(self._onnx[key], Exception):
                return self._onnx[key]
        raise self._onnx[shape]


def _write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _best_seconds(engine, batch, runs=2):
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        engine(batch)
        best = min(best, time.perf_counter() - start)
    return best


__all__ = ["ChosenEngine", "engine_plan", "open_engine", "paddle_engine"]
