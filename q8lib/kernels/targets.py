"""Compile every q8lib Triton kernel for Ada (sm_89) and Hopper (sm_90) without a GPU, and read what it needs.

CI has no GPU, but Triton compiles for any target on any machine: ``triton.compile(ASTSource(kernel,
signature, constexprs, attrs), target=GPUTarget("cuda", 89, 32))`` runs down to a cubin with the ``ptxas``
bundled in the triton wheel. This module enumerates the compile specs (:class:`Spec`) that q8lib's launchers use
on a GPU of a given compute capability at LTX-Video's shapes, taking every choice from the launchers' own
decision functions and tables (``row_quant.row_attempts``/``row_meta``, ``row_tune.json`` via
``_library.table_entry``, ``gemm._configs()`` and its ``EVEN_K`` heuristic, ``attn_producers.qk_meta``/``v_tiles``,
``fp8_attention.fwd_config_for``, ``int8_producers.producer_meta``, ``int8_attention.int8_fwd_config_for``: the
attention specs are in :mod:`.attn_targets`); compiles one (:func:`compile_spec`) and reports its shared memory (Triton's
metadata), registers and spills (``ptxas -v``'s log of that compile) and tensor-core instructions (``mma.sync`` /
``wgmma``) (:func:`resources`). ``tests/test_kernel_targets.py`` checks them: shared memory within the opt-in
maximum per block (sm_89: 101376 bytes, sm_90: 232448), no spills, ``wgmma`` on sm_90, ``mma`` on sm_89.
``python -m q8lib.kernels.targets`` prints the table (``--json`` writes it).

Run it in a process without ``TRITON_INTERPRET=1`` (interpreted kernels cannot be compiled; the test uses a
subprocess). Needs triton >= 3.3 (checked on 3.6 and 3.9). On an H200 (triton 3.6) the shared memory and
registers of these offline compiles equal those of the kernels q8lib's launchers JIT-compile there.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import io
import json
import os
import re
import sys
import time
import warnings

import torch

from ..quant import FP8, INT8
from . import gemm as _gemm
from . import row_quant as _rq
from ._library import table_entry
from ._target_base import _BATCH, _NAME, _PTR, _TOKENS, LTX_MODELS, SHARED_LIMIT, Spec
from .attn_targets import fp8_attn_specs, int8_attn_specs

__all__ = ["LTX_MODELS", "SHARED_LIMIT", "Spec", "compile_spec", "measure", "measure_all", "resources", "signature",
           "spec", "specs", "supported"]

def supported() -> str | None:
    """Why :func:`compile_spec` cannot run here (``None``: it can)."""
    try:
        from triton.compiler import ASTSource
    except ImportError:
        return "triton is not installed"
    if "constexprs" not in inspect.signature(ASTSource).parameters:  # the format before triton 3.3
        return "triton < 3.3 (ASTSource takes constants, not constexprs)"
    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError:
        return "triton has no NVIDIA backend"
    return None


# ------------------------------------------------------------------------------------------------
# Specs
def _row_specs(cap: int, attempt: int = 0) -> list[Spec]:
    """The row kernel as the fused LTX block launches it (``fused.py``): norm+modulation (``rms_norm_quantize``),
    plain quantization (attention outputs, the text, the FFN hidden when the GEMM fuses GELU), the gated
    residual add (``add_quantize``), the add + norm + modulation before the FFN, GELU + quantization (the FFN
    hidden under cuBLAS GEMMs), and ``rms_norm`` (float rows, no rotation). Full-row rotation and 128-blocks;
    No rotation too (``hadamard_block=1``).
    bf16 rows to int8 and e4m3, fp32 rows to int8. The launch form is the launcher's first attempt (the table
    entry for this architecture, else the default plan with 3 stages): the only one torch.compile launches
    (``attempt`` > 0: the eager launcher's later attempts after "out of resources", for investigations)."""
    out = []
    dims = sorted({m["dim"] for m in LTX_MODELS.values()})
    ffns = sorted({m["ffn"] for m in LTX_MODELS.values()})
    # mode -> (widths, norm, gelu, residual, gate, scale/shift)
    modes = {"norm": (dims, True, False, False, False, True), "plain": (dims + ffns, False, False, False, False, False),
             "add": (dims, False, False, True, True, False), "add_norm": (dims, True, False, True, False, True),
             "gelu": (ffns, False, True, False, False, False)}
    io_pairs = [(torch.bfloat16, INT8), (torch.bfloat16, FP8), (torch.float32, INT8)]
    for mode, (widths, norm, gelu, resid, gate, mod) in modes.items():
        for K in widths:
            for hb, rotate in ((None, True), (128, True), (None, False)):  # full, 128-blocks, none (hadamard_block=1)
                for xd, qd in io_pairs:
                    out.append(_row_spec(cap, mode, K, hb, rotate, xd, qd, norm=norm, gelu=gelu, resid=resid,
                                         gate=gate, mod=mod, weight=False, attempt=attempt))
    # what only the fused LTX-2 block launches (fused_ltx2.py): a norm without modulation (before text
    # cross-attention), alone or after a gated residual, and a gated residual before a modulated norm (the a2v/v2a
    # gates before the FFN's norm); bf16 rows in its two formats: int8 rotated, e4m3 unrotated (the Hopper default)
    ltx2 = {"norm_nomod": (True, False, False), "add_gate_norm_nomod": (True, True, False),
            "add_gate_norm": (True, True, True)}
    for mode, (norm, gate, mod) in ltx2.items():
        for K in dims:
            for rotate, qd in ((True, INT8), (False, FP8)):
                out.append(_row_spec(cap, mode, K, None, rotate, torch.bfloat16, qd, norm=norm, gelu=False,
                                     resid=gate, gate=gate, mod=mod, weight=False, attempt=attempt))
    for m in LTX_MODELS.values():  # LTX-2.3's gated attention outputs: per-head gates in to_out's quantizer
        for rotate, qd in ((True, INT8), (False, FP8)):
            out.append(_row_spec(cap, "head_gate", m["dim"], None, rotate, torch.bfloat16, qd, norm=False, gelu=False,
                                 resid=False, gate=False, mod=False, weight=False, attempt=attempt,
                                 head_d=m["head_dim"]))
    for m in LTX_MODELS.values():  # attention="fp8_tensor"'s e4m3 output read by to_out's quantizer (coded_attention):
        # int8 to_out rotates it, plain or gated; an unrotated e4m3 to_out takes the codes as they are unless gated
        for mode, rotate, qd in (("plain", True, INT8), ("head_gate", True, INT8), ("head_gate", False, FP8)):
            out.append(_row_spec(cap, mode, m["dim"], None, rotate, FP8, qd, norm=False, gelu=False, resid=False,
                                 gate=False, mod=False, weight=False, attempt=attempt,
                                 head_d=m["head_dim"] if mode == "head_gate" else 0))
    for K in dims:  # rms_norm: float rows out, no rotation, with an affine weight (LTX-1) or without (LTX-2.3's
        # gated attentions read their float query input in eager mode; under compile it is plain torch)
        for xd in (torch.bfloat16, torch.float32):
            out.append(_row_spec(cap, "rms_norm", K, None, False, xd, xd, norm=True, gelu=False, resid=False,
                                 gate=False, mod=True, weight=True, attempt=attempt))
        out.append(_row_spec(cap, "rms_norm_noweight", K, None, False, torch.bfloat16, torch.bfloat16, norm=True,
                             gelu=False, resid=False, gate=False, mod=True, weight=False, attempt=attempt))
    return [s for s in out if s is not None]


def _row_spec(cap, mode, K, hb, rotate, xd, od, *, norm, gelu, resid, gate, mod, weight, attempt=0,
              head_d=0) -> Spec | None:
    rot = -1 if not rotate else (0 if hb is None else hb)
    kind = _rq.row_kind(K, norm, gelu, resid, rot)
    measured = table_entry(cap, kind)
    tile = _rq.plan(K, hb, rotate)[0] * K
    attempts = _rq.row_attempts(K, tile, measured)
    if attempt >= len(attempts):
        return None
    t = attempts[attempt]
    meta = _rq.row_meta(K, hb, rotate, t, norm=norm, gelu=gelu, has_weight=weight, has_scale=mod, has_shift=mod,
                         residual=resid, gate=gate, out_dtype=od, cuda=True, head_d=head_d)
    warps, stages = meta.pop("num_warps"), meta.pop("num_stages")
    x = _PTR[xd]
    heads = K // head_d if head_d else 0
    ada = 6 * K  # AdaLN modulations are views of temb [B, 1, 6, K]: batch stride 6K, token stride 0
    args = {"X": x, "sxb": _TOKENS * K, "sxs": K, "W": x,
            "SC": x, "sscb": ada if mod else 0, "scs": 0, "SH": x, "sshb": ada if mod else 0, "shs": 0,
            "OUT": _PTR[od], "QS": "*fp32" if od in (INT8, FP8) else _PTR[od],
            "M": _BATCH * _TOKENS, "S": _TOKENS, "eps": 1e-6,
            "RS": x, "rsb": _TOKENS * K if resid else 0, "rss": K if resid else 0,
            "G": x, "gb": ada if gate else 0, "gs": 0, "HOUT": x, "HG": x, "hgb": _TOKENS * heads, "hgs": heads}
    rname = "none" if not rotate else ("full" if hb is None else f"b{hb}")
    src = f"row_tune.json sm_{cap} {kind}" if measured else "default plan"
    src += f", attempt {attempt + 1}" if attempt else ", first attempt"
    tag = f"@{attempt + 1}" if attempt else ""
    return Spec(f"row/{mode}/{K}/{rname}/{_NAME[xd]}->{_NAME[od]}{tag}", "q8lib.kernels.row_quant:_row_quant_kernel",
                args, meta, warps, stages, src, dots=rotate, wgmma=_row_wgmma(meta, warps))


def _row_wgmma(meta: dict, warps: int) -> bool:
    """Whether Triton lowers the row kernel's rotation to ``wgmma`` on sm_90: its ``[ROWS*K/B, B] @ H_B``
    product has M = ROWS*K/B rows, and Triton uses wgmma for 2-D dots with M a multiple of 64 and warps a
    multiple of 4 (and falls back to ``mma.sync`` otherwise, e.g. H_A's 32-row product or batched 3-D dots)."""
    m = meta["ROWS"] * meta["K"] // meta["B"]
    return m % 64 == 0 and warps % 4 == 0


def _gemm_specs(cap: int) -> list[Spec]:
    """Every autotune config of the 8-bit GEMM (``gemm._configs()``), int8 and e4m3, bias + GELU epilogue, bf16
    out, K a multiple of every BK (LTX's widths; ``EVEN_K`` from the autotuned kernel's own heuristic). On sm_90
    e4m3 goes to cuBLAS unless ``Q8LIB_GEMM=triton``; compiled anyway (the override is supported)."""
    heur = _gemm._q8_gemm_autotuned.fn.values  # triton.heuristics on the autotuned kernel
    out = []
    M, N, K = _BATCH * _TOKENS, 2048, 2048
    for qd in (INT8, FP8):
        for cfg in _gemm._configs():
            kw = dict(cfg.kwargs)
            ce = {**kw, "HAS_BIAS": True, "GELU": True, "IS_INT": qd == INT8}
            for name, fn in heur.items():
                ce[name] = fn({"M": M, "N": N, "K": K, **ce})
            args = {"XQ": _PTR[qd], "XS": "*fp32", "WQ": _PTR[qd], "WS": "*fp32", "BIAS": "*bf16", "OUT": "*bf16",
                    "M": M, "N": N, "K": K, "sxm": K, "swn": K, "som": N}
            tag = f"BM{kw['BM']}-BN{kw['BN']}-BK{kw['BK']}-s{cfg.num_stages}-w{cfg.num_warps}"
            out.append(Spec(f"gemm/{_NAME[qd]}/{tag}", "q8lib.kernels.gemm:_q8_gemm_kernel", args, ce,
                            cfg.num_warps, cfg.num_stages, "gemm._configs() autotune", dots=True, wgmma=True,
                            autotuned=True))
        # a K that is not a multiple of BK (tiny models only): the masked K-tail path, which the LTX shapes never take
        args = {"XQ": _PTR[qd], "XS": "*fp32", "WQ": _PTR[qd], "WS": "*fp32", "BIAS": "*bf16", "OUT": "*fp32",
                "M": 200, "N": 384, "K": 200, "sxm": 200, "swn": 200, "som": 384}
        ce = {"BM": 128, "BN": 256, "BK": 64, "GROUP_M": 8, "HAS_BIAS": True, "GELU": True, "IS_INT": qd == INT8,
              "EVEN_K": False}
        out.append(Spec(f"gemm_ragged_k/{_NAME[qd]}/BM128-BN256-BK64-s4-w8", "q8lib.kernels.gemm:_q8_gemm_kernel", args,
                        ce, 8, 4, "gemm._configs() autotune, K % BK != 0", dots=True, wgmma=True, autotuned=True))
    if cap >= 90:  # Hopper's persistent TMA GEMM (launch_gemm takes it for int8 on sm_90+; fp8 with Q8LIB_GEMM=triton_tma)
        bm, bn, bk, warps, stages = _gemm.TMA_CONFIG
        for qd in (INT8, FP8):
            args = {"X": _PTR[qd], "W": _PTR[qd], "XS": "*fp32", "WS": "*fp32", "BIAS": "*bf16", "OUT": "*bf16",
                    "M": M, "N": N, "K": K, "sxm": K, "swn": K, "som": N}
            ce = {"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8, "NUM_PROGS": 132, "HAS_BIAS": True, "GELU": True,
                  "IS_INT": qd == INT8, "WARP_SPEC": _gemm.TMA_WARP_SPECIALIZE}
            out.append(Spec(f"gemm_tma/{_NAME[qd]}/BM{bm}-BN{bn}-BK{bk}-s{stages}-w{warps}",
                            "q8lib.kernels.gemm:_q8_gemm_tma_kernel", args, ce, warps, stages, "gemm.TMA_CONFIG",
                            dots=True, wgmma=True))
    return out


# kernels launched on sm_90+ only (no spec for Ada)
HOPPER_ONLY = frozenset({"q8lib.kernels.gemm:_q8_gemm_tma_kernel"})


@functools.lru_cache(maxsize=8)
def specs(capability: int, row_attempt: int = 0) -> tuple[Spec, ...]:
    """Every compile spec q8lib launches on a GPU of compute capability ``capability`` (89: Ada, 90: Hopper).
    ``row_attempt`` > 0: only the row kernel, at the eager launcher's later attempt (labels end in ``@<n>``)."""
    if row_attempt:
        return tuple(_row_specs(capability, row_attempt))
    return tuple(_row_specs(capability) + _gemm_specs(capability) + fp8_attn_specs(capability)
                 + int8_attn_specs(capability))


def spec(capability: int, label: str) -> Spec:
    """The spec called ``label`` among :func:`specs` of ``capability``."""
    attempt = int(label.rsplit("@", 1)[1]) - 1 if "@" in label else 0
    for s in specs(capability, attempt):
        if s.label == label:
            return s
    raise KeyError(f"no spec {label!r} for sm_{capability}")


# ------------------------------------------------------------------------------------------------
# Compilation
def signature(fn_args: list[str], args: dict, constexprs: dict, float_type: str = "fp32") -> tuple[dict, dict, dict]:
    """``(signature, constexprs, attrs)`` for ``ASTSource`` as Triton's JIT specializes a launch: pointers
    (``"*bf16"``) are 16-byte aligned (``tt.divisibility``), integers are ``i32``/``i64`` and marked divisible
    by 16 when they are, an integer 1 becomes a constexpr, floats are ``float_type`` (``fp32`` as Triton's JIT;
    inductor launches a ``triton_op``'s kernels with ``fp64`` floats), bools ``u1``."""
    sig, ce, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(fn_args):
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        v = args[name]
        if isinstance(v, str):  # a pointer ("*bf16", 16-byte aligned) or a TMA descriptor ("tensordesc<...>")
            sig[name], div = v, v.startswith("*")
        elif isinstance(v, bool):
            sig[name], div = "u1", False
        elif isinstance(v, int):
            if v == 1:
                sig[name], ce[name] = "constexpr", 1
                continue
            sig[name], div = ("i32" if -2**31 <= v < 2**31 else "i64"), v % 16 == 0
        elif isinstance(v, float):
            sig[name], div = float_type, False
        else:
            raise TypeError(f"argument {name}: unsupported representative value {v!r}")
        if div:
            attrs[(i,)] = [["tt.divisibility", 16]]
    missing = set(args) - set(fn_args)
    if missing:
        raise TypeError(f"arguments {sorted(missing)} are not parameters of the kernel")
    return sig, ce, attrs


def _kernel(path: str):
    from triton.runtime.jit import JITFunction

    module, name = path.split(":")
    fn = getattr(importlib.import_module(module), name)
    if not isinstance(fn, JITFunction):
        raise TypeError(f"{path} is a {type(fn).__name__}, not a JITFunction: compile in a process without "
                           "TRITON_INTERPRET=1 (python -m q8lib.kernels.targets)")
    return fn


def compile_spec(spec: Spec, capability: int, float_type: str = "fp32"):
    """Compile ``spec`` for ``sm_<capability>`` (89, 90) -> Triton's ``CompiledKernel``, with the ``ptxas -v``
    log of this compile attached as ``ptxas_log`` (Triton runs ptxas with ``-v``; its log is printed when
    ``knobs.nvidia.dump_ptxas_log`` is set, and the compile is forced past Triton's cache so there is one)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _kernel(spec.kernel)
    sig, ce, attrs = signature(fn.arg_names, spec.args, spec.constexprs, float_type)
    options = {"num_warps": spec.num_warps}
    if spec.num_stages is not None:
        options["num_stages"] = spec.num_stages
    log = io.StringIO()
    saved = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    try:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = True, True
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # triton 3.9's TRITON_DEFAULT_FP_FUSION notice (launches use the same default)
            compiled = triton.compile(ASTSource(fn, sig, ce, attrs), target=GPUTarget("cuda", capability, 32),
                                      options=options)
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = saved
    compiled.ptxas_log = log.getvalue()
    return compiled


def resources(compiled) -> dict:
    """What a compiled kernel needs: ``shared`` (bytes of dynamic shared memory a launch requests, from Triton's
    metadata), ``regs`` (registers a thread), ``spill_stores``/``spill_loads``/``stack`` (bytes; from the
    ``ptxas -v`` log attached by :func:`compile_spec`), and ``mma``/``wgmma``: the PTX uses ``mma.sync`` /
    ``wgmma.mma_async`` tensor-core instructions."""
    log = getattr(compiled, "ptxas_log", "")
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not (regs and spill):
        raise RuntimeError(f"no ptxas -v report in the compile log (compile with compile_spec): {log[-500:]!r}")
    ptx = compiled.asm["ptx"]
    return {"shared": int(compiled.metadata.shared), "regs": int(regs.group(1)), "stack": int(spill.group(1)),
            "spill_stores": int(spill.group(2)), "spill_loads": int(spill.group(3)),
            "mma": "mma.sync" in ptx, "wgmma": "wgmma.mma_async" in ptx}


def measure(capability: int, label: str, float_type: str = "fp32") -> dict:
    """Compile the spec ``label`` for ``capability`` (float arguments as ``float_type``) -> :func:`resources` plus
    ``seconds``, or ``error``."""
    t0 = time.perf_counter()
    try:
        res = resources(compile_spec(spec(capability, label), capability, float_type))
    except Exception as e:  # noqa: BLE001 - reported per spec; the caller asserts
        res = {"error": f"{type(e).__name__}: {e}"[-3000:]}
    return {"capability": capability, "label": label, "float_type": float_type, **res,
            "seconds": round(time.perf_counter() - t0, 2)}


def measure_all(pairs, jobs: int | None = None) -> list[dict]:
    """:func:`measure` every ``(capability, label[, float_type])`` in ``jobs`` processes (default: one per CPU)."""
    pairs = list(pairs)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(pairs)))
    if jobs == 1:
        return [measure(*p) for p in pairs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    # longest first (GEMM, big rows) so no worker is left with a long compile at the end
    order = sorted(pairs, key=lambda p: (not p[1].startswith("gemm"), -len(p[1])))
    with ProcessPoolExecutor(jobs, mp_context=ctx) as ex:
        full = [tuple(p) + ("fp32",) * (3 - len(p)) for p in order]  # (cap, label, float_type)
        done = dict(zip(order, ex.map(measure, *zip(*full))))
    return [done[p] for p in pairs]


def _table(rows: list[dict]) -> str:
    lines = [f"{'kernel / config':58s} {'cap':>4s} {'smem':>7s} {'regs':>4s} {'spill':>5s} {'tc':>5s} {'s':>5s}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['label']:58s} {r['capability']:>4d} ERROR {r['error'].splitlines()[0][:80]}")
            continue
        tc = "wgmma" if r["wgmma"] else "mma" if r["mma"] else "-"
        s = spec(r["capability"], r["label"])
        over = "!" if r["shared"] > SHARED_LIMIT[r["capability"]] else " "
        lines.append(f"{r['label']:58s} {r['capability']:>4d} {r['shared']:>6d}{over} {r['regs']:>4d} "
                     f"{r['spill_stores']:>5d} {tc:>5s} {r['seconds']:>5.1f}  w{s.num_warps} s{s.num_stages or 3}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m q8lib.kernels.targets", description=__doc__.split("\n")[0])
    p.add_argument("--cap", type=int, action="append", choices=sorted(SHARED_LIMIT), help="capability (repeat)")
    p.add_argument("--only", action="append", default=[], help="labels containing this text (repeat)")
    p.add_argument("--row-attempt", type=int, default=1,
                   help="row kernel only, at the eager launcher's n-th attempt (default 1: every kernel, first attempt)")
    p.add_argument("--pairs", help="JSON file of [capability, label] (or [capability, label, float_type]) to compile "
                                   "(instead of --cap/--only)")
    p.add_argument("--jobs", type=int, default=None, help="compile processes (default: one per CPU)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--list", action="store_true", help="list the specs, compile nothing")
    a = p.parse_args(argv)
    why = supported()
    if why:
        print(f"cannot compile: {why}", file=sys.stderr)
        return 2
    if a.pairs:
        with open(a.pairs) as f:
            pairs = [tuple(x) for x in json.load(f)]
    else:
        pairs = [(c, s.label) for c in a.cap or sorted(SHARED_LIMIT) for s in specs(c, a.row_attempt - 1)
                 if not a.only or any(o in s.label for o in a.only)]
    if a.list:
        print("\n".join(f"sm_{c} {lbl}" for c, lbl in pairs))
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("cannot compile under TRITON_INTERPRET=1 (unset it)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows = measure_all(pairs, a.jobs)
    import triton

    if a.json:
        with open(a.json, "w") as f:
            json.dump({"triton": triton.__version__, "seconds": round(time.perf_counter() - t0, 1), "results": rows},
                      f, indent=1)
    print(_table(rows))
    print(f"{len(rows)} compiles in {time.perf_counter() - t0:.0f} s (triton {triton.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
