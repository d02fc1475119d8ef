"""Running the benchmark's variants: the reference outputs, one variant (or a variant and its ``_graph`` form)
built, warmed up, compiled, captured and timed in isolation, and the wall-clock budget of a run."""
from __future__ import annotations

import contextlib
import functools
import gc
import signal
import statistics
import threading
import time
import traceback

import torch

from ..cudagraph import CUDAGraphForward
from ..metrics import cosine, relative_error
from ..timing import host_probe, time_ms
from .build import build_transformer, outputs
from .profile import profile_split
from .variants import VARIANTS, compile_blocks, prepare_variant, variant_context

__all__ = ["BudgetExceeded", "time_budget", "reference_outputs", "variant_groups", "run_group", "mem"]


class BudgetExceeded(BaseException):
    """The run's ``--budget-s`` ran out (a ``BaseException``: library code that catches ``Exception`` lets it by)."""


@contextlib.contextmanager
def time_budget(seconds: float | None):
    """Raise :class:`BudgetExceeded` in the main thread once ``seconds`` of wall time have passed (SIGALRM, once);
    no limit when ``seconds`` is ``None``. Yields ``check()``, which raises it too once the time is up (for the
    places between variants, in case library code turned the signal's exception into another one, and for
    platforms without SIGALRM)."""
    end = time.monotonic() + seconds if seconds else None

    def check():
        if end is not None and time.monotonic() >= end:
            raise BudgetExceeded(f"time budget of {seconds:g} s reached")

    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield check
        return

    def fire(signum, frame):
        raise BudgetExceeded(f"time budget of {seconds:g} s reached")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield check
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def mem(what):
    """CUDA memory stats in MiB (``None`` on CPU smoke runs); ``"reset"`` resets the peak."""
    if not torch.cuda.is_available():
        return None
    if what == "reset":
        return torch.cuda.reset_peak_memory_stats()
    if what == "reserved":  # what the caching allocator held at most (CUDA graph pools included)
        return torch.cuda.max_memory_reserved() / 2**20
    return (torch.cuda.max_memory_allocated() if what == "peak" else torch.cuda.memory_allocated()) / 2**20


def _free():
    gc.collect()
    torch.cuda.empty_cache()


def _errors(res: dict, outs: dict, refs: dict) -> None:
    """Relative error and cosine of each output stream against each reference (``audio_*`` for LTX-2's audio)."""
    for rname, ref in refs.items():
        for stream, y in outs.items():
            pre = "" if stream == "video" else f"{stream}_"
            res[f"{pre}rel_err_vs_{rname}"], res[f"{pre}cos_vs_{rname}"] = relative_error(y, ref[stream]), cosine(y, ref[stream])


def reference_outputs(cfg, inputs, device, fp32_skip, log) -> tuple[dict, dict]:
    """The bf16 (and, unless ``fp32_skip`` says why not, float32 without TF32) eager outputs every variant is
    compared with: ``({name: {stream: output}}, {name: what happened})``. Each model is freed before the next."""
    refs, info = {}, {}
    for rname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if rname == "fp32" and fp32_skip:
            info[rname] = {"skipped": fp32_skip}
            continue
        prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        t0, m = time.time(), None
        mem("reset")
        try:
            m = build_transformer(cfg, device, dtype)
            x = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() and "coords" not in k else v
                 for k, v in inputs.items()}
            refs[rname] = {k: v.float() for k, v in outputs(m(**x)).items()}
            info[rname] = {"wall_s": time.time() - t0, "peak_mb": mem("peak")}
        except torch.cuda.OutOfMemoryError as e:
            info[rname] = {"skipped": f"out of GPU memory: {str(e).splitlines()[0][:300]}"}
        except Exception:  # noqa: BLE001 - the variants still run, without this reference
            info[rname] = {"error": traceback.format_exc()[-2000:]}
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
            m = None
            _free()
        log(f"reference {rname}: {info[rname]}")
    return refs, info


def variant_groups(names):
    """Variants in run order, ``X`` and a ``X_graph`` right after it in one group (one build, one compile)."""
    out = []
    for n in names:
        if out and n == out[-1][-1] + "_graph" and len(out[-1]) == 1:
            out[-1].append(n)
        else:
            out.append([n])
    return out


def run_group(group, cfg, inputs, refs, device, args, all_flops, log, results: dict) -> None:
    """Build (and compile) ``group[0]``'s model once and time every variant of ``group`` on it, writing each
    variant's record into ``results`` as it goes (what was measured stays when :class:`BudgetExceeded` ends it)."""
    with variant_context(group[0]):  # the variant's own module settings, if any
        _run_group(group, cfg, inputs, refs, device, args, all_flops, log, results)


def _run_group(group, cfg, inputs, refs, device, args, all_flops, log, results: dict) -> None:
    model, shared, y = None, {}, None
    try:
        for name in group:
            res, t0 = {"host": host_probe()}, time.time()
            results[name] = res
            try:
                if model is None:
                    _free()
                    mem("reset")
                    model, comp = prepare_variant(name, cfg, device)
                    shared = {"weights_mb": mem("now"), "build_peak_mb": mem("peak"), "build_s": time.time() - t0}
                    if VARIANTS[name][0] == "q8lib":
                        shared["fused_blocks"] = sum("_q8_fused" in b.__dict__ for b in model.transformer_blocks)
                        shared["fused_ffns"] = sum("_q8_ffn" in m.__dict__ for m in model.modules())
                        shared["weight_dtype"] = model._q8_config.weight_dtype
                    log(f"{name}: built in {shared['build_s']:.0f} s, weights {shared['weights_mb']} MiB")
                    y = model(**inputs)  # eager warm-up (also autotunes the Triton GEMMs)
                    if comp:
                        compile_blocks(model, comp)
                        tc = time.time()
                        y = model(**inputs)
                        torch.cuda.synchronize() if device.type == "cuda" else None
                        shared["compile_s"] = time.time() - tc
                        log(f"{name}: compiled in {shared['compile_s']:.0f} s")
                    res.update(shared)
                else:
                    res.update(shared, same_build_as=group[0])
                fwd = functools.partial(model, **inputs)
                mem("reset")  # before the capture: the graph's private pool holds the activations a replay uses
                if name.endswith("_graph"):
                    tc = time.time()
                    fwd = functools.partial(CUDAGraphForward(model), **inputs)
                    y = fwd()
                    res["capture_s"] = time.time() - tc
                times = time_ms(fwd, args.iters, args.warmup)
                res["fwd_ms"] = statistics.median(times)
                res["fwd_ms_min"], res["fwd_ms_max"] = min(times), max(times)
                res["peak_mb"], res["reserved_peak_mb"] = mem("peak"), mem("reserved")
                res["est_50_steps_s"] = 50 * res["fwd_ms"] / 1e3
                res["linear_tflops_effective"] = all_flops / res["fwd_ms"] / 1e9
                _errors(res, outputs(y), refs)  # the output of the last untimed call, as timed (eager/compiled/graph)
                if args.profile and device.type == "cuda":
                    res["profile"] = profile_split(fwd)
            except BudgetExceeded as e:
                res["skipped"] = f"{e} while running this variant"
                raise
            except Exception as e:  # noqa: BLE001 - one broken variant must not lose the others
                res["error"] = traceback.format_exc()[-3000:]
                log(f"{name} failed: {type(e).__name__}: {str(e)[:300]}")
            finally:
                res["wall_s"] = time.time() - t0
            fwd = y = None
    finally:
        model = fwd = y = None  # a failed variant must not keep its model (or its graph) alive into the next one
        _free()
        torch._dynamo.reset()
