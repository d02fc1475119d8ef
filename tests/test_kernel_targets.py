"""Every q8lib Triton kernel compiles for Ada (sm_89) and Hopper (sm_90) at the launch forms q8lib picks there.

No GPU needed: :mod:`q8lib.kernels.targets` enumerates the specs (kernel, argument types, constexprs, warps,
stages) from the launchers' own tables and decision functions at LTX-Video's shapes, and compiles each with
the ptxas bundled in triton. This session runs Triton's interpreter, whose kernels cannot be compiled, so one
subprocess compiles every selected spec once (in parallel), and the tests read its results. Per (spec, cap):

* shared memory within the opt-in maximum per block: 101376 bytes (99 KB) on sm_89, 232448 (227 KB) on sm_90;
* no register spills, except the few measured ones in ``KNOWN_SPILLS`` (bounded; spills cost speed, not
  correctness);
* tensor cores: ``mma.sync`` on sm_89; on sm_90 ``wgmma`` wherever Triton can use it (``Spec.wgmma``: the
  GEMM, the attention kernel, and the rotations whose product has a multiple of 64 rows), else ``mma.sync``.

Launch forms that do not fit sm_89 are listed in ``ADA_OVERFLOW`` and xfail strictly, so they stay visible
(and an XPASS says the entry can go). The GEMM's autotune configs are candidates: one that does not fit is
dropped by Triton's autotuner (OutOfResources -> not timed), so on sm_89 it xfails and the test that matters
is that every dtype keeps a fitting, spill-free config; on sm_90 every config must fit (they were picked there).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

import triton

from q8lib.kernels import targets as T

WHY = T.supported()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"cannot compile kernels here: {WHY}")
TRITON = tuple(int(p) for p in triton.__version__.split(".")[:2])
CAPS = (89, 90)

# sm_89 launch forms that need more shared memory than Ada has (bytes with triton 3.9 / 3.6). Row kernel: no
# sm_89 entry in row_tune.json, so the first attempt is the default plan with 3 pipeline stages; eager launches
# then retry with 1 stage (fits: <= 65536 bytes), but torch.compile launches the first attempt only. (Starting
# Ada at 1 stage instead fits everywhere but spills 12-2380 bytes in 10 forms, measured with triton 3.9: an
# sm_89 table chosen from these compiles is the better fix.) The FP8 q/k producer starts Ada at 1 stage
# (qk_meta): with 3 it needed 106-180 KB and has no retry.
_ROW_OVERFLOW = {
    "row/norm/4096/full/fp32->i8": "114688", "row/norm/4096/b128/fp32->i8": "135168 / 139264",
    "row/plain/8192/full/fp32->i8": "114688", "row/plain/8192/b128/fp32->i8": "106496",
    "row/plain/16384/full/bf16->i8": "131072", "row/plain/16384/full/bf16->e4m3": "131072",
    "row/plain/16384/full/fp32->i8": "196608",
    "row/plain/16384/b128/bf16->i8": "114688", "row/plain/16384/b128/bf16->e4m3": "114688",
    "row/plain/16384/b128/fp32->i8": "180224",
    "row/add/4096/full/fp32->i8": "114688", "row/add/4096/b128/fp32->i8": "135168",
    "row/add_norm/4096/full/fp32->i8": "147456",
    "row/add_norm/4096/b128/bf16->i8": "102400 / 106496", "row/add_norm/4096/b128/bf16->e4m3": "102400 / 106496",
    "row/add_norm/4096/b128/fp32->i8": "167936 / 172032",
    "row/gelu/8192/full/fp32->i8": "114688", "row/gelu/8192/b128/fp32->i8": "106496",
    "row/gelu/16384/full/bf16->i8": "131072", "row/gelu/16384/full/bf16->e4m3": "131072",
    "row/gelu/16384/full/fp32->i8": "196608",
    "row/gelu/16384/b128/bf16->i8": "114688", "row/gelu/16384/b128/bf16->e4m3": "114688",
    "row/gelu/16384/b128/fp32->i8": "180224",
}
ADA_OVERFLOW = {k: f"needs {v} B of shared memory on sm_89 (> 101376) at the row launcher's first attempt (default "
                   "plan, 3 stages): torch.compile launches only that one; eager retries with 1 stage"
                for k, v in _ROW_OVERFLOW.items()}
# Overflows with some triton versions only: label -> (condition, bytes).
ADA_OVERFLOW_IF = {"row/add_norm/2048/b128/fp32->i8": (TRITON < (3, 9), "102400 with triton 3.6 (3.9: 100352)")}

# Measured spills (bytes of spill stores, the larger of triton 3.6 and 3.9): bounds, not targets.
KNOWN_SPILLS = {
    (89, "row/norm/4096/b128/bf16->i8"): 4, (89, "row/norm/4096/b128/bf16->e4m3"): 4,  # 3.9 only
    (90, "row/norm/4096/b128/bf16->i8"): 4, (90, "row/norm/4096/b128/bf16->e4m3"): 4,  # 3.6 only
    (89, "attn/fwd/D128/self"): 48, (89, "attn/fwd/D128/cross"): 48,  # FWD_CONFIG_ADA at D=128: 3.9 8/0, 3.6 48/48
    # fp32 rows at the sm_90 table's (bf16-measured) launch forms
    (90, "row/norm/2048/full/fp32->i8"): 52, (90, "row/add/2048/full/fp32->i8"): 488,
    # the INT8 statistics producer on fp32 rows (fp32 models; bf16 rows do not spill), triton 3.9
    (90, "attn_int8/stats/D64/self/fp32"): 16, (90, "attn_int8/stats/D128/self/fp32"): 8,
}


def _param(cap, s, overflow_marks=True):
    marks = []
    if overflow_marks and cap == 89:
        if s.label in ADA_OVERFLOW:
            marks.append(pytest.mark.xfail(strict=True, reason=ADA_OVERFLOW[s.label]))
        elif s.label in ADA_OVERFLOW_IF:
            cond, nbytes = ADA_OVERFLOW_IF[s.label]
            marks.append(pytest.mark.xfail(cond, strict=True, reason=f"needs {nbytes} B of shared memory on sm_89"))
    return pytest.param((cap, s.label), id=f"sm{cap}:{s.label}", marks=marks)


ALL = [(cap, s) for cap in CAPS for s in T.specs(cap)] if WHY is None else []
CASES = [_param(cap, s) for cap, s in ALL]
# the GEMM's masked K-tail form (K not a multiple of BK: tiny models) spills 0.5-20 KB at every autotune config
# (measured with triton 3.9): it is checked to compile, fit and use the tensor cores, not for speed
PLAIN = [_param(cap, s, False) for cap, s in ALL if not s.label.startswith("gemm_ragged_k/")]
DOTS = [_param(cap, s, False) for cap, s in ALL if s.dots]
GEMM_DTYPES = ("i8", "e4m3")


@pytest.fixture(scope="session")
def compiled(request, tmp_path_factory):
    """``(cap, label) -> resources`` for every spec this session's tests of this file ask for, compiled once
    in one subprocess without ``TRITON_INTERPRET`` (one compile process per CPU)."""
    here = Path(__file__).resolve()
    wanted = set()
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if Path(str(item.fspath)).resolve() != here:
            continue
        if "case" in params:
            wanted.add(tuple(params["case"]))
        if "case64" in params:
            wanted.add(tuple(params["case64"]))
        if "qname" in params:
            wanted |= {(89, s.label) for s in T.specs(89) if s.label.startswith(f"gemm/{params['qname']}/")}
    d = tmp_path_factory.mktemp("kernel-targets")
    (d / "pairs.json").write_text(json.dumps(sorted(wanted)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "q8lib.kernels.targets", "--pairs", str(d / "pairs.json"), "--json", str(d / "out.json")]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    log_dir = os.environ.get("Q8LIB_CI_LOG_DIR")
    if log_dir:  # the full table, for the CI logs
        Path(log_dir, "kernel-targets.txt").write_text(proc.stdout)
    return {(r["capability"], r["label"]) + ((r["float_type"],) if r.get("float_type", "fp32") != "fp32" else ()): r
            for r in json.loads((d / "out.json").read_text())["results"]}


def _result(compiled, case):
    r = compiled[tuple(case)]
    assert "error" not in r, f"sm_{case[0]} {case[1]} does not compile: {r.get('error')}"
    return r


# torch.compile launches a triton_op's kernels from inductor's code, which passes Python floats as fp64 (Triton's
# JIT: fp32). An fp64 value reaching an e4m3 cast does not compile ("Unsupported conversion from f64 to f8E4M3FN",
# triton 3.6 on the H200, unrotated rows and the q/k producer): the kernels cast their float arguments first.
FP64_LABELS = [s.label for s in T.specs(90) if (s.label.startswith("row/") and "/none/bf16->e4m3" in s.label
                                                and ("/2048/" in s.label or "/8192/" in s.label))
               or s.label.startswith(("attn/qk_quant/D64/norm_rope/bf16", "attn/qk_quant/D128/norm_rope/bf16",
                                      "attn/norm_rope/D64/norm_rope/bf16"))] if WHY is None else []


@pytest.mark.parametrize("case64", [pytest.param((90, lbl, "fp64"), id=f"sm90:{lbl}") for lbl in FP64_LABELS])
def test_compiles_with_inductor_float_arguments(case64, compiled):
    assert len(FP64_LABELS) >= 8
    r = compiled[tuple(case64)]
    assert "error" not in r, f"{case64[1]} with fp64 float arguments does not compile: {r['error'][-1500:]}"


@pytest.mark.parametrize("case", CASES)
def test_shared_memory_fits(case, compiled):
    cap, label = case
    r = _result(compiled, case)
    s = T.spec(cap, label)
    limit = T.SHARED_LIMIT[cap]
    if s.autotuned and cap == 89 and r["shared"] > limit:
        pytest.xfail(f"autotune config needs {r['shared']} B > {limit}: the autotuner drops it on sm_89")
    assert r["shared"] <= limit, (f"sm_{cap} {label} ({s.source}, {s.num_warps} warps, {s.num_stages} stages) "
                                  f"needs {r['shared']} B of shared memory > {limit}")


@pytest.mark.parametrize("case", PLAIN)
def test_no_spills(case, compiled):
    r = _result(compiled, case)
    bound = KNOWN_SPILLS.get(tuple(case), 0)
    assert r["spill_stores"] <= bound and r["spill_loads"] <= bound, (
        f"sm_{case[0]} {case[1]}: {r['spill_stores']} B spill stores, {r['spill_loads']} B spill loads "
        f"({r['regs']} registers), measured bound {bound}")


@pytest.mark.parametrize("case", DOTS)
def test_tensor_core_instructions(case, compiled):
    cap, label = case
    r = _result(compiled, case)
    if cap == 89:
        assert r["mma"] and not r["wgmma"], f"sm_89 {label}: expected mma.sync only (mma={r['mma']}, wgmma={r['wgmma']})"
    elif T.spec(cap, label).wgmma:
        assert r["wgmma"], f"sm_90 {label}: expected wgmma, the PTX has none (mma.sync: {r['mma']})"
    else:
        assert r["mma"] and not r["wgmma"], f"sm_90 {label}: expected mma.sync (rows not a multiple of 64), got wgmma"


@pytest.mark.parametrize("qname", GEMM_DTYPES)
def test_gemm_autotune_keeps_a_config_on_ada(qname, compiled):
    rows = {key[1]: r for key, r in compiled.items() if key[0] == 89 and len(key) == 2 and key[1].startswith(f"gemm/{qname}/")}
    assert rows and not [r for r in rows.values() if "error" in r]
    limit = T.SHARED_LIMIT[89]
    fits = [lbl for lbl, r in rows.items() if r["shared"] <= limit and r["spill_stores"] == 0]
    pruned = {lbl: r["shared"] for lbl, r in rows.items() if r["shared"] > limit}
    assert fits, f"no {qname} GEMM config fits sm_89 without spills; over {limit} B: {pruned}"


def test_specs_match_kernel_parameters():
    """Every spec names each parameter of its kernel once (runtime argument or constexpr)."""
    for cap, s in ALL:
        names = list(_any_kernel(s.kernel).arg_names)
        assert set(s.args).isdisjoint(s.constexprs), s.label
        assert sorted(names) == sorted([*s.args, *s.constexprs]), f"sm_{cap} {s.label}: {names}"


def _any_kernel(path):
    """The kernel object (a JITFunction, or an InterpretedFunction in this session): only its parameter names."""
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def test_every_kernel_is_compiled():
    """Each ``*_kernel`` defined in any module of ``q8lib.kernels`` has specs for both targets."""
    import importlib
    import pkgutil

    import q8lib.kernels

    kernels = set()
    for info in pkgutil.iter_modules(q8lib.kernels.__path__):
        m = f"q8lib.kernels.{info.name}"
        for n, obj in vars(importlib.import_module(m)).items():
            if n.endswith("_kernel") and hasattr(obj, "arg_names") and getattr(obj.fn, "__module__", None) == m:
                kernels.add(f"{m}:{n}")
    assert "q8lib.kernels.cudnn_attention:_kv_codes_kernel" in kernels  # the walk finds kernels in every module
    for cap in CAPS:
        want = kernels - (T.HOPPER_ONLY if cap < 90 else set())
        assert want <= {s.kernel for s in T.specs(cap)}, f"sm_{cap}: no spec for {want - {s.kernel for s in T.specs(cap)}}"


def test_no_kernel_parameter_has_a_default():
    """Every launcher passes every constexpr: torch 2.11's wrap_triton (inductor launching a kernel from its own code)
    does not fill in a kernel's defaults, so a default would only work in eager (session 13's norm + RoPE producer)."""
    import importlib
    import inspect
    import pkgutil

    import q8lib.kernels

    with_defaults, seen = [], 0
    for info in pkgutil.iter_modules(q8lib.kernels.__path__):
        m = f"q8lib.kernels.{info.name}"
        for n, obj in vars(importlib.import_module(m)).items():
            if n.endswith("_kernel") and hasattr(obj, "arg_names") and getattr(obj.fn, "__module__", None) == m:
                seen += 1
                with_defaults += [f"{m}:{n}({p.name})" for p in inspect.signature(obj.fn).parameters.values()
                                  if p.default is not inspect.Parameter.empty]
    assert seen >= 10 and not with_defaults, (seen, with_defaults)


def test_every_table_entry_is_compiled():
    """Every launch form measured in row_tune.json is among the specs of its architecture."""
    from q8lib.kernels._library import tune_table

    for arch, entries in tune_table().items():
        cap = int(arch.removeprefix("sm_"))
        if cap not in CAPS:
            continue
        used = {s.source.split()[2].rstrip(",") for s in T.specs(cap) if s.source.startswith("row_tune.json")}
        assert set(entries) <= used, f"{arch} table entries without a spec: {sorted(set(entries) - used)}"


def test_signature_matches_triton_jit():
    """:func:`q8lib.kernels.targets.signature` specializes arguments as Triton's JIT does."""
    import torch
    from triton.backends.compiler import BaseBackend

    jit = pytest.importorskip("triton.runtime.jit")
    native = getattr(jit, "native_specialize_impl", None)
    if native is None:
        pytest.skip("this triton has no native_specialize_impl")
    dtypes = {v: k for k, v in T._PTR.items()}
    seen = set()
    for _, s in ALL:
        if s.kernel in seen:
            continue
        seen.add(s.kernel)
        names = list(_any_kernel(s.kernel).arg_names)
        sig, _, attrs = T.signature(names, s.args, s.constexprs)
        for i, n in enumerate(names):
            if n in s.constexprs:
                continue
            v = s.args[n]
            if isinstance(v, str) and v.startswith("tensordesc"):
                continue  # a TMA descriptor: no tensor stands for it here
            arg = torch.empty(16, dtype=dtypes[v]) if isinstance(v, str) else v
            ty, spec = native(BaseBackend, arg, False, True, True)[:2]
            assert sig[n] == ty, f"{s.kernel} {n}={v!r}: {sig[n]} vs the JIT's {ty}"
            if ty != "constexpr":
                assert ((i,) in attrs) == (spec == "D"), f"{s.kernel} {n}={v!r}: divisibility differs from the JIT's"
