"""INT8 attention (``mode="int8"``): producers and kernel against their reference twins, the reference math against
float64 attention, the ops' schemas and fakes, torch.compile, and the backend wiring.

On CPU the Triton kernels run under Triton's interpreter (conftest sets TRITON_INTERPRET=1) on small shapes;
``gpu`` tests run the compiled kernels on LTX-sized shapes. Outputs are poisoned (NaN) before each launch so
unwritten elements fail the checks. Bounds are measured figures (in the comments) with headroom.
"""
import importlib.util
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch

from helpers import ltx_attention, rel_err
from q8lib.kernels import _WARNED
from q8lib import reference as ref

pytest.importorskip("triton")
ka = pytest.importorskip("q8lib.kernels.attention")
from q8lib.kernels import int8_attention as IA  # noqa: E402
from q8lib.kernels import int8_producers as IP  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter evaluates both where() arms

DEV = "cuda" if torch.cuda.is_available() else "cpu"
GPU = DEV == "cuda"

_STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "attention_accuracy.py"
_spec = importlib.util.spec_from_file_location("attention_accuracy", _STUDY)
A = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("attention_accuracy", A)  # dataclasses look the module up while the class is built
_spec.loader.exec_module(A)


def _rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEV).to(dtype)


def _lens(lens):
    return None if lens is None else torch.tensor(lens, dtype=torch.int32, device=DEV)


def _tables(S, H, D):
    ang = torch.rand(1, S, H, D // 2, device=DEV).repeat_interleave(2, -1) * 6.28
    return ang.cos(), ang.sin()


def _int8_attention(q, k, v, lens=None, out_dtype=torch.float32):
    """Producers + kernel on ``[B, S, H, D]`` with a poisoned output; returns ``(out [B, Sq, H, D], operands)``."""
    D = q.shape[-1]
    ops = IP.int8_quant_qk(q, k, None, -1.0, None, -1.0, None, None, lens, ref.LOG2E / math.sqrt(D))
    out = torch.full((q.shape[0], q.shape[1], q.shape[2], D), math.nan, device=DEV, dtype=out_dtype)
    IA.launch_int8_fwd(*ops, v, lens, out)
    return out, ops


PRODUCER_CASES = [  # (B, Sq, Sk, H, D, norm, rope, key_lengths)
    (2, 70, 70, 2, 64, True, True, None),  # self-attention: norm across heads + RoPE
    (2, 45, 24, 2, 64, True, False, [24, 9]),  # cross-attention: norm, text lengths
    (1, 40, 130, 3, 128, False, False, [100]),  # the plain op, 3 heads (padded to 4), a partly valid block
]


@pytest.mark.parametrize("B,Sq,Sk,H,D,norm,rope,lens", PRODUCER_CASES)
def test_producer_matches_its_twin(seed, B, Sq, Sk, H, D, norm, rope, lens):
    q, k = _rand(B, Sq, H, D) * 2, _rand(B, Sk, H, D) + 3 * _rand(D)  # keys with a common offset
    w = (torch.rand(H * D, device=DEV) + 0.5) if norm else None
    eps = 1e-5 if norm else -1.0
    cos, sin = _tables(Sq, H, D) if rope else (None, None)
    kl = _lens(lens)
    got = IP.int8_quant_qk(q, k, w, eps, w, eps, cos, sin, kl, 0.18)
    want = IP.quant_qk_int8_ref(q, k, w, eps, w, eps, cos, sin, kl, 0.18)
    for g, wt, name in zip(got, want, ("q8", "qs", "k8", "ks")):
        assert g.shape == wt.shape and g.dtype == wt.dtype, name
    q8, qs, k8, ks = got
    # float32 rounding of norm/RoPE/means may move a code by one where the value sits on a rounding boundary;
    # measured: identical codes on CPU
    for g, wt in ((q8, want[0]), (k8, want[2])):
        assert (g == wt).float().mean() > 0.999 and (g.int() - wt.int()).abs().max() <= 1
    assert torch.allclose(qs, want[1], rtol=1e-5, atol=0) and torch.allclose(ks, want[3], rtol=1e-4, atol=0)
    assert (q8[:, :, Sq:] == 0).all() and (qs[:, :, Sq:] == 0).all() and (k8[:, :, Sk:] == 0).all()
    n_valid = [Sk] * B if lens is None else lens
    for b, n in enumerate(n_valid):
        assert (k8[b, :, n:] == 0).all()  # masked keys: code 0
        assert (ks[b, :, -(-n // 64):] == 0).all() and (ks[b, :, :-(-n // 64)] > 0).all()
        # a block's scale is the amax of its (smoothed, balanced) valid keys: its largest code is 127
        blocks = k8[b, :, :n].abs().amax(-1)
        for j in range(-(-n // 64)):
            assert (blocks[:, j * 64:(j + 1) * 64].amax(-1) == 127).all()


def test_smoothing_and_balancing_are_exact(seed):
    """A common key offset and a per-channel q/k rescaling leave q kᵀ's softmax unchanged: the producers remove
    both (key mean; λ from the channel amaxes), so the INT8 outputs barely move while plain int8 QK would."""
    B, H, S, D = 1, 2, 96, 64
    q, k, v = _rand(B, H, S, D), _rand(B, H, S, D), _rand(B, H, S, D)
    base = ref.int8_attention_ref(q, k, v)
    shifted = ref.int8_attention_ref(q, k + 20 * _rand(D), v)
    c = torch.exp(2 * _rand(D))  # channel scales over ~e^±4
    balanced = ref.int8_attention_ref(q * c, k / c, v)
    exact = ref.sdpa_attention(q.double(), k.double(), v.double())
    # measured over seeds 0-2: 4e-5-4e-4 (the mean's float32 rounding moves a few codes) / 2e-7-7e-6
    assert rel_err(base, shifted) < 2e-3 and rel_err(base, balanced) < 2e-4
    assert rel_err(exact, base) < 0.03  # measured 0.009-0.011


@pytest.mark.parametrize("B,H,Sq,Sk,D,lens,vdt", [
    (1, 2, 192, 192, 64, None, torch.bfloat16),  # [1, 2, 192, 64]: padded to 256, three full key blocks
    (2, 2, 77, 130, 64, [130, 65], torch.float16),  # full and partial, across a key-block boundary; fp16 P·V
    (2, 2, 50, 70, 128, [1, 70], torch.float32),  # head dim 128; one valid key; fp32 v (bf16 in the kernel)
    (2, 1, 40, 31, 64, [31, 7], torch.bfloat16),  # fewer keys than one block
])
def test_kernel_matches_its_twin(seed, B, H, Sq, Sk, D, lens, vdt):
    q, k, v = _rand(B, Sq, H, D) * 2, _rand(B, Sk, H, D), _rand(B, Sk, H, D, dtype=vdt)
    kl = _lens(lens)
    out, ops = _int8_attention(q, k, v, kl)
    assert not out.isnan().any()
    twin = IA.int8_attention_fwd_ref(*ops, v, kl, Sq, torch.float32)
    # online softmax over 64-key blocks vs one block: P rounded to 16 bits against a different max; measured
    # 4e-5-7e-4 on CPU, seeds 0-2 (1e-7 within one key block; the GPU adds its exp2 and accumulation order)
    assert rel_err(twin, out) < (2e-3 if not GPU else 5e-3)
    exact = ref.sdpa_attention(q.transpose(1, 2).double(), k.transpose(1, 2).double(), v.transpose(1, 2).double(), kl)
    assert rel_err(exact, out.transpose(1, 2)) < 0.04  # measured 0.005-0.016
    bf16 = torch.full_like(out, math.nan, dtype=torch.bfloat16)  # the op's usual output dtype
    IA.launch_int8_fwd(*ops, v, kl, bf16)
    assert rel_err(out, bf16) < 6e-3  # bf16 rounding; the interpreter's cast truncates: measured 1e-3-3.4e-3


def test_padded_keys_are_ignored(seed):
    B, H, Sq, Sk, D = 2, 2, 20, 90, 64
    q, k, v = _rand(B, Sq, H, D), _rand(B, Sk, H, D), _rand(B, Sk, H, D)
    kl = _lens([90, 23])
    a, _ = _int8_attention(q, k, v, kl)
    k2, v2 = k.clone(), v.clone()
    k2[1, 23:], v2[1, 23:] = _rand(Sk - 23, H, D) * 100, math.nan  # masked keys: any values, even NaN v
    b, _ = _int8_attention(q, k2, v2, kl)
    assert torch.equal(a, b)


def _ref_error(q, k, v, fn):
    exact = A.exact_attention(q, k, v)
    return rel_err(exact, fn(q.float(), k.float(), v.float()).double())


@pytest.mark.parametrize("S,D", [(512, 64), (512, 128)])
def test_reference_accuracy_vs_float64(seed, S, D):
    """The INT8 math against float64 attention, on the study's inputs (benchmarks/attention_accuracy.py): issue
    #14's targets (<= 0.03 Gaussian; <= 2 x bf16 + 0.03 with outlier channels) with margin, and far below FP8."""
    q, k, v = A.gaussian_inputs(1, 2, S, D, seed)
    gauss = _ref_error(q, k, v, ref.int8_attention_ref)
    assert gauss < 0.02  # measured 0.010-0.011 (bf16 flash model: 0.0037)
    assert gauss < 0.5 * _ref_error(q, k, v, ref.fp8_attention_ref)  # FP8: 0.051-0.052
    for variant in ("disjoint", "shared"):
        q, k, v = A.outlier_inputs(1, 2, S, D, seed, variant)
        err = _ref_error(q, k, v, ref.int8_attention_ref)
        bf16 = rel_err(A.exact_attention(q, k, v), A.bf16_flash(q, k, v))
        assert err < 0.045 and err < 2 * bf16 + 0.03, variant  # measured 0.025-0.027 (bf16 0.012-0.015)
        assert err < _ref_error(q, k, v, ref.fp8_attention_ref), variant  # FP8: 0.08-0.46


def test_ops_schema_and_fake():
    B, S, Sk, H, D = 1, 40, 24, 2, 64
    q, k, v = _rand(B, S, H, D), _rand(B, Sk, H, D), _rand(B, Sk, H, D, dtype=torch.bfloat16)
    w = torch.rand(H * D, device=DEV) + 0.5
    kl = _lens([17])
    utils = ("test_schema", "test_faketensor")
    qop = IP.int8_quant_qk.visible if GPU else IP.int8_quant_qk.opaque
    torch.library.opcheck(qop, (q, k, w, 1e-5, w, 1e-5, None, None, kl, 0.18), test_utils=utils)
    ops = IP.int8_quant_qk(q, k, w, 1e-5, w, 1e-5, None, None, kl, 0.18)
    fop = IA.int8_attention_fwd.visible if GPU else IA.int8_attention_fwd.opaque
    torch.library.opcheck(fop, (*ops, v, kl, S, torch.bfloat16), test_utils=utils)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, y = torch.empty(2, 130, 4, 64, device=DEV), torch.empty(2, 77, 4, 64, device=DEV)
        q8, qs, k8, ks = IP.int8_quant_qk(x, y, None, -1.0, None, -1.0, None, None, None, 1.0)
        out = IA.int8_attention_fwd(q8, qs, k8, ks, y, None, 130, torch.bfloat16)
    assert q8.shape == (2, 4, 256, 64) and q8.dtype == torch.int8 and qs.shape == (2, 4, 256)
    assert k8.shape == (2, 4, 128, 64) and ks.shape == (2, 4, 2) and ks.dtype == torch.float32
    assert out.shape == (2, 130, 4, 64) and out.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="RoPE tables"):  # RoPE needs q and k of the tables' length
        IP.int8_quant_qk(q, k, w, 1e-5, w, 1e-5, *_tables(S, H, D), kl, 0.18)


def test_compile_fullgraph(seed):
    """The backend op traces whole under torch.compile (fullgraph): the two INT8 ops are graph nodes."""
    B, H, S, D = 1, 2, 40, 64
    q, k, v = (_rand(B, S, H, D).transpose(1, 2) for _ in range(3))
    kl = _lens([33])
    eager = ka.attention(q, k, v, kl, mode="int8")
    compiled = torch.compile(lambda a, b, c, d: ka.attention(a, b, c, d, mode="int8"), fullgraph=True,
                             backend="aot_eager" if not GPU else "inductor")
    assert torch.equal(compiled(q, k, v, kl), eager)


def test_attention_op_and_fallback(seed):
    B, H, S, D = 1, 2, 30, 64
    q, k, v = (_rand(B, S, H, D).transpose(1, 2) for _ in range(3))  # strided, as from projections
    out = ka.attention(q, k, v, mode="int8")
    assert out.shape == (B, H, S, D)
    assert rel_err(ref.int8_attention_ref(q, k, v), out) < 5e-3  # one key block, the same math: measured 1e-7
    q48 = _rand(B, H, S, 48)  # not a kernel head dim: the reference (no rotation, any head dim) with a warning
    _WARNED.clear()  # the warning comes once per (op, reason): an earlier test may have had it
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = ka.attention(q48, q48, q48, mode="int8")
    assert any("falls back" in str(x.message) for x in w)
    assert torch.equal(got, ref.int8_attention_ref(q48, q48, q48))


def _ltx_attention(cross=False, heads=2):
    return ltx_attention(cross, 64, heads, DEV)


@pytest.mark.parametrize("cross", [False, True])
def test_fused_core_and_processor(seed, cross):
    """The fused INT8 path (producers with norm_q/k + RoPE, kernel) equals the generic path (torch norm + RoPE, the
    reference INT8 math), and the processor routes ``mode="int8"`` through the backend."""
    from q8lib import Q8AttnProcessor
    from q8lib.attention import q8_attention_core

    attn = _ltx_attention(cross)
    B, S, Sk, inner = 2, 100, 24 if cross else 100, 128  # self: two key blocks
    q, k, v = _rand(B, S, inner), _rand(B, Sk, inner), _rand(B, Sk, inner)
    rope, kl = None, None
    if cross:
        kl = _lens([24, 9])
    else:
        ang = _rand(B, S, inner // 2).repeat_interleave(2, -1)
        rope = (ang.cos(), ang.sin())
    with torch.no_grad():
        got = ka.fused_attention_core(attn, q, k, v, rope, kl, "int8")
        generic = q8_attention_core(attn, q, k, v, rope, kl, "int8", "reference")
        exact = q8_attention_core(attn, q.double(), k.double(), v.double(),
                                  None if rope is None else tuple(t.double() for t in rope), kl, "sdpa", "reference")
    assert got is not None and got.shape == (B, S, inner)
    assert rel_err(generic, got) < 5e-3  # measured 2e-7 (cross: one key block), 1.1e-3-1.2e-3 (self: two)
    assert rel_err(exact, got) < 0.015  # measured 0.003-0.004 (FP8 on the same inputs: 0.033-0.039)
    x = _rand(B, S, 128)
    ctx = _rand(B, Sk, 96) if cross else None
    mask = None
    if cross:
        m = torch.ones(B, Sk, device=DEV)
        m[1, 9:] = 0
        mask = ((1 - m) * -10000.0).unsqueeze(1)
    with torch.no_grad():
        proc = Q8AttnProcessor("int8", backend="reference")
        assert proc.mode == "int8" and Q8AttnProcessor(fp8=False).mode == "sdpa"
        want = Q8AttnProcessor("sdpa", backend="reference")(attn, x, ctx, mask, rope)
        assert rel_err(want, proc(attn, x, ctx, mask, rope)) < 0.01  # measured 6e-4-1.4e-3


def test_tiny_model_runs_int8_attention_on_cpu(seed):
    """quantize_(..., attention="int8") on the reference backend: the whole tiny model runs the INT8 math."""
    import q8lib
    from helpers import forward, tiny_inputs
    from q8lib.tiny import make_tiny_transformer

    inputs = tiny_inputs(dtype=torch.float32)
    model = make_tiny_transformer(seed=seed % 1000)
    want = forward(model, inputs)
    cfg = q8lib.Q8Config(weight_dtype="int8")
    sdpa = forward(q8lib.quantize_(make_tiny_transformer(seed=seed % 1000), cfg, backend="reference",
                                   attention="sdpa", progress=False), inputs)
    q8 = q8lib.quantize_(model, cfg, backend="reference", attention="int8", progress=False)
    assert q8._q8_runtime.attention == "int8"
    assert all(p.mode == "int8" for p in q8.attn_processors.values())
    got = forward(q8, inputs)
    assert torch.isfinite(got).all()
    # the INT8 attention adds nothing measurable to the int8 linears' error: measured 0.0019-0.0024 with it,
    # 0.0019-0.0023 with SDPA (FP8 attention: 0.0031-0.0046), seeds 0-2
    assert rel_err(want, got) < 1.5 * rel_err(want, sdpa) + 2e-3


# ------------------------------------------------------------------------------------------------
# GPU: compiled kernels on LTX shapes, torch.compile and CUDA graphs
# ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("B,Sq,Sk,lens", [(1, 1021, 1021, None), (2, 3630, 3630, None), (2, 777, 128, [1, 77]),
                                          (2, 500, 512, [512, 300])])
def test_gpu_kernel_vs_references(seed, D, B, Sq, Sk, lens):
    H = 4
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for S in (Sq, Sk, Sk))
    kl = _lens(lens)
    out, ops = _int8_attention(q, k, v, kl, torch.bfloat16)
    assert not out.isnan().any()
    twin = IA.int8_attention_fwd_ref(*ops, v, kl, Sq, torch.float32)
    exact = ref.sdpa_attention(*(t.transpose(1, 2).float() for t in (q, k, v)), kl).transpose(1, 2)
    assert rel_err(twin, out) < 0.01  # bf16 output rounding + block-wise softmax: not yet measured on a GPU
    assert rel_err(exact, out) < 0.03  # the reference math: ~0.011 on unit-normal data


@pytest.mark.gpu
def test_gpu_compile_fullgraph_and_cuda_graph(seed):
    B, H, S, D = 2, 8, 1000, 64
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    kl = _lens([1000, 300])
    eager = ka.attention(q, k, v, kl, mode="int8")
    compiled = torch.compile(lambda a, b, c, d: ka.attention(a, b, c, d, mode="int8"), fullgraph=True)
    # inductor compiles the balancing arithmetic between the producer passes (torch ops inside the triton_op) with
    # its own rounding, so a few int8 codes move: 1.1e-4 measured on the H200 (session 7); the kernels are the same
    assert rel_err(eager, compiled(q, k, v, kl)) < 1e-3
    g = torch.cuda.CUDAGraph()
    ka.attention(q, k, v, kl, mode="int8")
    with torch.cuda.graph(g):
        static = ka.attention(q, k, v, kl, mode="int8")
    q2 = torch.randn_like(q)
    q.copy_(q2)
    g.replay()
    assert torch.equal(static, ka.attention(q2, k, v, kl, mode="int8"))
