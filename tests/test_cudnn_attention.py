"""``attention="fp8_tensor"``: FP8 attention with one scale per tensor after K smoothing (cuDNN's engine on a GPU).

CPU: the reference emulation (``q8lib.reference.fp8_tensor_attention_ref``) against float64 attention, and the tiny
LTX-2 through the Q8 processor against fp32. GPU (``gpu`` marker): ``q8lib::cudnn_fp8_sdpa`` against the emulation,
under CUDA-graph replay, and the tiny LTX-2 on the triton backend.
"""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import q8lib
from helpers import rel_err
from q8lib import Q8Config
from q8lib import reference as ref
from q8lib.backends import ATTENTION_MODES, attention_mode
from q8lib.errors import SettingsError

sys.path.insert(0, str(Path(__file__).parent))
import test_ltx2 as L2  # noqa: E402  (the tiny LTX-2 builders)

GPU = torch.cuda.is_available()
HAVE_CUDNN = importlib.util.find_spec("cudnn") is not None


@pytest.fixture
def fp8_everywhere(monkeypatch):
    """FP8 for every attention of the tiny models (whose key sequences are below the full-size threshold)."""
    monkeypatch.setattr(ref, "FP8_TENSOR_MIN_KEYS", 1)
    monkeypatch.setattr(ref, "FP8_TENSOR_MIN_QUERIES", 1)


def _qkv(seed, B=1, H=4, Sq=256, Sk=256, D=64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Sq, D, generator=g)
    k, v = (torch.randn(B, H, Sk, D, generator=g) for _ in range(2))
    return q.to(device), k.to(device), v.to(device), g


# Measured (seeds 0-9, [1, 4, 256, 64]): Gaussian 0.057-0.061 against float64 (cuDNN's engine on the H200: 0.060 at
# LTX shapes); a shared key offset of 3 sigma: 0.057-0.061 with K smoothing, 0.092-0.104 without; key lengths (77 of
# 256): 0.055-0.058. e4m3 keeps 3 mantissa bits: ~3.5% per rounded operand.
def test_reference_emulation_vs_float64(seed):
    q, k, v, g = _qkv(seed % 1000)
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    out = ref.fp8_tensor_attention_ref(q, k, v)
    assert out.dtype == v.dtype and out.shape == q.shape
    assert rel_err(exact, out) < 0.07
    offset = k + 3.0 * torch.randn(1, 4, 1, 64, generator=g)  # one shared direction in every key
    exact = F.scaled_dot_product_attention(q.double(), offset.double(), v.double())
    smoothed = rel_err(exact, ref.fp8_tensor_attention_ref(q, offset, v))
    plain = rel_err(exact, ref.fp8_tensor_attention_ref(q, offset, v, k_smooth=False))
    assert smoothed < 0.07 and smoothed < plain


def test_reference_emulation_masks_keys(seed):
    q, k, v, _ = _qkv(seed % 1000, B=2, Sk=256)
    lengths = torch.tensor([77, 256])
    exact = ref.sdpa_attention(q.double(), k.double(), v.double(), lengths)
    out = ref.fp8_tensor_attention_ref(q, k, v, lengths)
    assert rel_err(exact, out) < 0.07
    garbage = k.clone()
    garbage[0, :, 77:] = 1e4  # what padded keys hold must not leak into the kept ones' softmax
    assert torch.isfinite(ref.fp8_tensor_attention_ref(q, garbage, v, lengths)).all()


def test_quantize_per_tensor_round_trip_and_zeros():
    x = torch.randn(3, 5, 7) * 10
    codes, descale = ref.quantize_per_tensor(x)
    assert codes.dtype == torch.float8_e4m3fn and descale.shape == ()
    assert codes.float().abs().max().item() == 448.0
    assert rel_err(x, codes.float() * descale) < 0.04
    codes, descale = ref.quantize_per_tensor(torch.zeros(4))
    assert (codes.float() == 0).all() and descale.item() == 0.0


def test_mode_is_known_everywhere():
    assert "fp8_tensor" in ATTENTION_MODES and attention_mode("fp8_tensor") == "fp8_tensor"
    from q8lib.app.cli import build_parser

    args = build_parser().parse_args(["generate", "--prompt", "a red ball", "--attention", "fp8_tensor"])
    assert args.attention == "fp8_tensor"


@pytest.mark.skipif(HAVE_CUDNN, reason="checks the message for a missing nvidia-cudnn-frontend")
def test_triton_backend_names_the_missing_package():
    pytest.importorskip("triton")
    from q8lib.kernels import TritonBackend

    be = TritonBackend()
    assert "nvidia-cudnn-frontend" in be.attention_unavailable_reason("fp8_tensor")
    assert be.attention_unavailable_reason("fp8") is None


# Tiny LTX-2 against fp32, worse of video and audio, seeds 0-5, text right-padded on the last sample (as
# test_ltx2.BOUNDS): plain int8 0.024-0.030, gated fp8_e4m3 0.036-0.056 (attention="fp8": 0.014-0.018 and
# 0.031-0.056). Bounds: the measured max + ~30%.
MODEL_BOUNDS = {("plain", "int8"): 0.038, ("gated", "fp8_e4m3"): 0.072}


@pytest.mark.parametrize("variant,weight_dtype", sorted(MODEL_BOUNDS))
def test_tiny_ltx2_vs_fp32(seed, variant, weight_dtype, fp8_everywhere):
    model = L2.tiny_ltx2(variant, seed % 1000)
    inputs = L2.pipeline_inputs(model, seed % 1000, text_kept=None)
    inputs["encoder_attention_mask"][-1, 10:] = 0
    expected = L2.run(model, inputs)
    q8 = q8lib.quantize_(model, Q8Config(weight_dtype=weight_dtype), attention="fp8_tensor", progress=False)
    for r, o in zip(expected, L2.run(q8, inputs)):
        assert torch.isfinite(o).all()
        assert rel_err(r, o) < MODEL_BOUNDS[variant, weight_dtype]


def test_to_out_takes_the_codes_without_decoding(seed, monkeypatch, fp8_everywhere):
    """The processor sends the e4m3 output to ``to_out``: as it is for an e4m3 ``to_out`` without rotation (one scale
    per row, all equal), through its quantizer otherwise; both represent the decoded output."""
    from q8lib.attention import coded_attention
    from q8lib.backends import get_backend
    from q8lib.modules import Q8Linear

    torch.manual_seed(seed % 1000)
    attn = L2.tiny_ltx2("plain").transformer_blocks[0].attn1
    be = get_backend("reference")
    B, S, W = 2, 24, attn.to_q.out_features
    query, key, value = (torch.randn(B, S, W) for _ in range(3))
    codes, descale = be.attention_codes(attn, query, key, value)
    assert codes.dtype == torch.float8_e4m3fn and codes.shape == (B, S, W) and descale.shape == ()
    decoded = be.attention_core(attn, query, key, value, mode="fp8_tensor")
    torch.testing.assert_close(codes.float() * descale, decoded.float(), rtol=0, atol=0)
    fp8_out = Q8Linear.from_linear(attn.to_out[0], "fp8_e4m3", 1, backend="reference")
    x_q, x_s = coded_attention(attn, fp8_out, query, key, value, mode="fp8_tensor", backend="reference")
    assert x_q.data_ptr() == codes.data_ptr() or torch.equal(x_q.view(torch.uint8), codes.view(torch.uint8))
    assert torch.equal(x_s, descale.expand(B, S))
    int8_out = Q8Linear.from_linear(attn.to_out[0], "int8", None, backend="reference")
    x_q, x_s = coded_attention(attn, int8_out, query, key, value, mode="fp8_tensor", backend="reference")
    rows = ref.hadamard_transform(x_q.float() * x_s[..., None], None)  # int8 rows rotated back
    assert rel_err(decoded, rows) < 0.01  # int8 rounding of rotated rows: ~0.4%
    assert coded_attention(attn, int8_out, query, key, value, mode="fp8", backend="reference") is None
    calls = []
    monkeypatch.setattr(type(be), "attention_codes", lambda self, *a, **k: calls.append(1) or None)
    assert coded_attention(attn, fp8_out, query, key, value, mode="fp8_tensor", backend="reference") is None
    assert calls  # a backend without the path: the caller decodes


@pytest.mark.filterwarnings("error::q8lib.errors.Q8FallbackWarning")
def test_quantizers_read_e4m3_codes():
    """The triton row quantizers (the GPU's, else Triton's interpreter) read e4m3 codes as they read the same values in
    float."""
    pytest.importorskip("triton")
    from q8lib.kernels import linear as kl

    torch.manual_seed(0)
    dev = "cuda" if GPU else "cpu"
    codes, _ = ref.quantize_per_tensor(torch.randn(2, 8, 256, device=dev) * 3)
    gates = torch.rand(2, 8, 4, device=dev) * 2
    # the kernels, not the reference fallback (which would warn: an error here, see the marker)
    for qdtype, block in (("int8", None), ("fp8_e4m3", 1), ("int8", 64)):
        for got, want in ((kl.quantize_activation(codes, qdtype, block), kl.quantize_activation(codes.float(), qdtype,
                                                                                              block)),
                          (kl.gated_quantize(codes, gates, qdtype, block), kl.gated_quantize(codes.float(), gates,
                                                                                            qdtype, block))):
            assert torch.equal(got[0].view(torch.uint8), want[0].view(torch.uint8))
            assert torch.equal(got[1], want[1])


@pytest.mark.parametrize("few", ["queries", "keys"])
def test_few_queries_or_keys_run_sdpa(seed, monkeypatch, few):
    """Below :data:`q8lib.reference.FP8_TENSOR_MIN_QUERIES` queries or :data:`~q8lib.reference.FP8_TENSOR_MIN_KEYS`
    keys ``fp8_tensor`` is SDPA (and has no e4m3 output); at both thresholds it is FP8."""
    from q8lib.backends import get_backend

    monkeypatch.setattr(ref, "FP8_TENSOR_MIN_QUERIES", 16)
    monkeypatch.setattr(ref, "FP8_TENSOR_MIN_KEYS", 32)
    be = get_backend("reference")
    Sq, Sk = (15, 32) if few == "queries" else (16, 31)
    q, k, v, _ = _qkv(seed % 1000, Sq=Sq, Sk=Sk)
    assert torch.equal(be.attention(q, k, v, mode="fp8_tensor"), ref.sdpa_attention(q, k, v))
    attn = L2.tiny_ltx2("plain").transformer_blocks[0].attn2
    W = attn.to_q.out_features
    query, key = torch.randn(1, Sq, W), torch.randn(1, Sk, W)
    assert be.attention_codes(attn, query, key, torch.randn(1, Sk, W)) is None
    q, k, v, _ = _qkv(seed % 1000, Sq=16, Sk=32)
    assert torch.equal(be.attention(q, k, v, mode="fp8_tensor"), ref.fp8_tensor_attention_ref(q, k, v))
    assert be.attention_codes(attn, torch.randn(1, 16, W), torch.randn(1, 32, W), torch.randn(1, 32, W)) is not None


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("weight", [True, False])
def test_static_scale_q_producer(seed, split, weight):
    """q straight from its norm + RoPE producer as e4m3 with the norm's bound as scale (Triton's interpreter on the
    CPU): its reference twin's codes, and no saturation even with an outlier channel that dominates a token."""
    pytest.importorskip("triton")
    from q8lib.kernels.cudnn_attention import norm_rope_e4m3, norm_rope_e4m3_ref

    dev = "cuda" if GPU else "cpu"
    g = torch.Generator().manual_seed(seed % 1000)
    B, S, H, D = 2, 29, 2, 64  # 29 tokens: a partial last tile
    x = torch.randn(B, S, H * D, generator=g)
    x[0, 3, 5] = 1e4  # one channel holds almost all of token 3's energy: its entry meets the bound
    w = (1 + 0.5 * torch.randn(H * D, generator=g)) if weight else None
    ang = torch.randn(1, H, S, D // 2, generator=g) if split else torch.randn(1, S, H * D // 2, generator=g)
    if not split:
        ang = ang.repeat_interleave(2, -1).unflatten(2, (H, D))
    x, ang = x.to(dev), ang.to(dev)
    w = None if w is None else w.to(dev)
    cos, sin = ang.cos(), ang.sin()
    scale = ref.norm_bound_scale(w, H * D, dev)
    rows = x.unflatten(2, (H, D))
    got = norm_rope_e4m3(rows, w, 1e-5, cos, sin, scale)
    want = norm_rope_e4m3_ref(rows, w, 1e-5, cos, sin, scale)
    assert got.dtype == torch.float8_e4m3fn and got.shape == rows.shape
    assert (got.float() == want.float()).float().mean() > 0.99  # float32 rounding may flip a code; measured 1.0
    from q8lib.kernels.attn_producers import norm_rope_f32

    peak = (norm_rope_f32(rows, w, 1e-5, cos, sin) * scale).abs().max().item()  # before the saturating cast
    assert 100 < peak <= 448 * (1 + 1e-6)  # the outlier lands near the top; the bound is never crossed


@pytest.mark.filterwarnings("error::q8lib.errors.Q8FallbackWarning")
@pytest.mark.parametrize("smooth", [True, False])
@pytest.mark.parametrize("shape,dtype,lengths", [((2, 77, 4, 16), torch.float32, None),
                                                 ((1, 130, 3, 32), torch.bfloat16, None),
                                                 ((2, 5, 2, 8), torch.float32, None),
                                                 ((2, 77, 4, 16), torch.bfloat16, (9, 77)),
                                                 ((3, 40, 2, 8), torch.float32, (0, 17, 99))])
def test_kv_per_tensor_matches_its_twin(seed, smooth, shape, dtype, lengths):
    """K smoothing and per-tensor e4m3 of k and v in two Triton passes (the GPU's, else the interpreter's) against
    the torch twin, with a shared key offset (what smoothing removes), token counts off the tiles and key lengths
    (clamped to [1, S]; padding takes no part in the mean or the scales and gets zero codes): the same scales and
    codes (on the GPU the mean is summed in another order: codes may move by one e4m3 step)."""
    pytest.importorskip("triton")
    from q8lib.kernels.cudnn_attention import kv_per_tensor, kv_per_tensor_ref

    g = torch.Generator().manual_seed(seed % 1000)
    k = torch.randn(shape, generator=g) * 2 + torch.randn(shape[-2:], generator=g) * 3
    v = torch.randn(shape, generator=g)
    dev = "cuda" if GPU else "cpu"
    k, v = k.to(dev, dtype), v.to(dev, dtype)
    kl = None if lengths is None else torch.tensor(lengths, device=dev, dtype=torch.int32)
    pad = None if kl is None else max(lengths[0], 1)  # sample 0's padding (lengths clamp to [1, S])
    if kl is not None:  # padding that would dominate the scales if it counted
        k[0, pad:] += 1000
        v[0, pad:] -= 1000
    got, want = kv_per_tensor(k, v, kl, smooth), kv_per_tensor_ref(k, v, kl, smooth)
    _assert_kv_close(got, want)
    if kl is not None:
        assert got[1] < 1 and got[3] < 1 and torch.all(got[0][0, pad:].float() == 0)
    if not GPU:  # the interpreter sums in the twin's order here: bit-exact
        assert torch.equal(got[0].view(torch.uint8), want[0].view(torch.uint8)) and torch.equal(got[1], want[1])


def test_kv_per_tensor_zeros_and_empty():
    """An all-zero v has scale 0 and zero codes (no NaN); no tokens: empty codes and zero scales."""
    pytest.importorskip("triton")
    from q8lib.kernels.cudnn_attention import kv_per_tensor

    dev = "cuda" if GPU else "cpu"
    k = torch.randn(1, 9, 2, 8, device=dev)
    k8, dk, v8, dv = kv_per_tensor(k, torch.zeros_like(k), None, True)
    assert dv.item() == 0 and torch.all(v8.float() == 0) and torch.isfinite(k8.float()).all() and dk.item() > 0
    k8, dk, v8, dv = kv_per_tensor(k[:, :0], k[:, :0], None, True)
    assert k8.shape == (1, 0, 2, 8) and v8.shape == (1, 0, 2, 8) and dk.item() == 0 and dv.item() == 0


@pytest.mark.parametrize("bad", ["v_dim", "k_heads", "lengths"])
def test_engine_inputs_are_checked_first(bad):
    """Shapes the k/v passes cannot take fail with a ValueError naming them, before the engine is looked for."""
    from q8lib.kernels.cudnn_attention import fp8_tensor_codes

    q8 = torch.zeros(2, 16, 4, 8).to(torch.float8_e4m3fn)
    k, v, kl = torch.randn(2, 32, 4, 8), torch.randn(2, 32, 4, 8), None
    if bad == "v_dim":
        v = torch.randn(2, 32, 4, 16)
    elif bad == "k_heads":
        k = v = torch.randn(2, 32, 2, 8)
    else:
        kl = torch.tensor([3], dtype=torch.int32)
    with pytest.raises(ValueError, match="key_lengths" if bad == "lengths" else "one shape"):
        fp8_tensor_codes(q8, torch.tensor(1.0), k, v, kl)


def test_missing_engine_is_refused_before_anything_changes():
    """A backend that cannot run ``fp8_tensor`` (the triton backend without ``nvidia-cudnn-frontend``) is named by
    ``set_q8_attention`` before any processor is swapped."""
    from q8lib import backends
    from q8lib.attention import set_q8_attention
    from q8lib.backends import Backend, register_backend

    class NoEngine(Backend):
        name = "test_no_fp8_tensor"
        priority = -1

        def attention_unavailable_reason(self, mode):
            return "no engine for fp8_tensor here" if mode == "fp8_tensor" else None

    register_backend(NoEngine())
    try:
        model = L2.tiny_ltx2("plain")
        before = {n: type(m.processor) for n, m in model.named_modules() if hasattr(m, "processor")}
        with pytest.raises(SettingsError, match="no engine for fp8_tensor"):
            set_q8_attention(model, "fp8_tensor", backend="test_no_fp8_tensor")
        assert before == {n: type(m.processor) for n, m in model.named_modules() if hasattr(m, "processor")}
        set_q8_attention(model, "sdpa", backend="test_no_fp8_tensor")  # other modes are not its business
    finally:
        backends._REGISTRY.pop("test_no_fp8_tensor")
        backends._RESOLVED.clear()


def test_unknown_mode_fails_clearly():
    with pytest.raises(SettingsError, match="fp8_tensor"):
        attention_mode("fp8-tensor")


# ---------------------------------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not (GPU and HAVE_CUDNN), reason="needs a CUDA GPU and nvidia-cudnn-frontend")


@pytest.mark.gpu
def test_kv_per_tensor_compiled_matches_eager(seed):
    """Inductor launches both passes (and fuses the scale reduction between them): same codes and scales as eager,
    at LTX-2's video self-attention width."""
    from q8lib.kernels.cudnn_attention import kv_per_tensor

    g = torch.Generator(device="cuda").manual_seed(seed % 1000)
    k = torch.randn(2, 1000, 32, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    v = torch.randn(2, 1000, 32, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    lens = torch.tensor([1000, 613], device="cuda", dtype=torch.int32)
    for kl in (None, lens):
        eager = kv_per_tensor(k, v, kl, True)
        _assert_kv_close(torch.compile(lambda a, b, c: kv_per_tensor(a, b, c, True), fullgraph=True)(k, v, kl), eager)


def _assert_kv_close(got, want):
    """v's codes and scale exact (a max is order-free); k's scale within float32 rounding and its codes within one
    e4m3 step (k's mean, summed in another order, can move a value across a rounding boundary)."""
    assert [t.dtype for t in got] == [t.dtype for t in want] and got[0].shape == want[0].shape and got[1].shape == ()
    assert torch.equal(got[2].view(torch.uint8), want[2].view(torch.uint8)) and torch.equal(got[3], want[3])
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=0)
    step = 2.0 ** -3 * want[0].float().abs().clamp_min(2.0 ** -6)  # one e4m3 step of each code
    assert torch.all((got[0].float() - want[0].float()).abs() <= step + 1e-6)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("shape,lengths", [((2, 8, 1024, 1024, 128), None), ((2, 8, 1000, 1000, 64), None),
                                           ((2, 8, 700, 300, 128), (300, 77))])
def test_cudnn_engine_matches_the_emulation(shape, lengths):
    from q8lib.kernels.cudnn_attention import fp8_tensor_attention

    B, H, Sq, Sk, D = shape
    torch.manual_seed(0)
    # [B, H, S, D] views of [B, S, H, D] rows, as the model's producers hand them over
    q = torch.randn(B, Sq, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    k, v = (torch.randn(B, Sk, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(2))
    kl = None if lengths is None else torch.tensor(lengths, device="cuda", dtype=torch.int32)
    exact = ref.sdpa_attention(q.double(), k.double(), v.double(), kl)
    out = fp8_tensor_attention(q, k, v, kl)
    emulated = ref.fp8_tensor_attention_ref(q.float(), k.float(), v.float(), kl)
    assert out.shape == q.shape and out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    e_out, e_emu = rel_err(exact, out), rel_err(exact, emulated)
    assert e_out < 0.075 and abs(e_out - e_emu) < 0.015, (e_out, e_emu)
    # replayed from a CUDA graph (the plan exists now): the same codes
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        replayed = fp8_tensor_attention(q, k, v, kl)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(replayed, out, rtol=0, atol=0)


@pytest.mark.gpu
@gpu
def test_tiny_ltx2_on_the_gpu_compiled(fp8_everywhere):
    model = L2.tiny_ltx2("gated", 0).cuda()
    inputs = L2.pipeline_inputs(model.cpu(), 0, text_kept=None)
    model.cuda()
    inputs["encoder_attention_mask"][-1, 10:] = 0
    inputs = {n: (t.cuda() if isinstance(t, torch.Tensor) else t) for n, t in inputs.items()}
    expected = L2.run(model, inputs)
    q8 = q8lib.quantize_(model, Q8Config(weight_dtype="fp8_e4m3"), attention="fp8_tensor", progress=False)
    eager = L2.run(q8, inputs)
    for r, o in zip(expected, eager):
        assert torch.isfinite(o).all() and rel_err(r, o) < MODEL_BOUNDS["gated", "fp8_e4m3"]
    torch._dynamo.reset()
    try:  # compiled: as accurate as eager (inductor's arithmetic flips some e4m3 roundings: 0.037 from eager)
        q8.compile_repeated_blocks(fullgraph=True)
        for r, b in zip(expected, L2.run(q8, inputs)):
            assert torch.isfinite(b).all() and rel_err(r, b) < MODEL_BOUNDS["gated", "fp8_e4m3"]
    finally:
        torch._dynamo.reset()
