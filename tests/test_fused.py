"""The fused LTX block forward (q8lib.fused) against the unfused Q8 path and diffusers' forward.

CPU: the reference backend (same math, so the outputs must agree to float rounding), and the
Triton kernels through the interpreter behind a test backend. GPU: the installed default path
(triton backend) vs the unfused one, eager and compiled.
"""
import copy

import pytest
import torch

import q8lib
from helpers import rel_err
from q8lib.backends import Backend, register_backend
from q8lib.fused import install_fused_blocks, install_if_fast, is_fused, uninstall_fused_blocks
from q8lib.kernels import TritonBackend
from q8lib.kernels import linear as kl
from q8lib.tiny import make_tiny_transformer

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


class _InterpBackend(TritonBackend):
    """The triton backend's linear ops on whatever device the tensors are (CPU: the interpreter);
    attention stays the reference math."""

    name = "test_triton_linear"
    priority = -1  # never picked by "auto"

    def __init__(self):
        super().__init__()
        self._linear = kl

    def unavailable_reason(self):
        return None

    def supports_device(self, device):
        return True

    attention = Backend.attention
    attention_core = Backend.attention_core


register_backend(_InterpBackend())


def _inputs(cfg, batch=2, frames=2, height=4, width=4, text=8, device="cpu", dtype=torch.float32):
    x = torch.randn(batch, frames * height * width, cfg.in_channels, device=device, dtype=dtype)
    enc = torch.randn(batch, text, cfg.caption_channels, device=device, dtype=dtype)
    mask = torch.ones(batch, text, device=device, dtype=dtype)
    mask[-1, text // 2:] = 0  # right padding on the last sample
    t = torch.tensor([300.0, 700.0][:batch], device=device)
    return (x, enc, t, mask), dict(num_frames=frames, height=height, width=width)


def _run(model, args, kw):
    with torch.no_grad():
        return model(*args, **kw).sample


@pytest.mark.parametrize("weight_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("attention", ["fp8", "int8", "sdpa", "fp8_tensor"])
def test_fused_equals_unfused_reference(seed, weight_dtype, attention, monkeypatch):
    monkeypatch.setattr(q8lib.reference, "FP8_TENSOR_MIN_KEYS", 1)  # fp8_tensor on the tiny model's attentions too
    monkeypatch.setattr(q8lib.reference, "FP8_TENSOR_MIN_QUERIES", 1)
    model = make_tiny_transformer(seed=seed % 1000)
    args, kw = _inputs(model.config)
    q = q8lib.quantize_(model, q8lib.Q8Config(weight_dtype=weight_dtype, attention=attention, backend="reference"),
                        progress=False)
    assert not any(is_fused(b) for b in q.transformer_blocks)  # reference backend: not installed by default
    unfused = _run(q, args, kw)
    assert install_fused_blocks(q, attention, backend="reference") == len(q.transformer_blocks)
    fused = _run(q, args, kw)
    # same ops in the same order on an fp32 model: measured 0.0
    assert rel_err(unfused, fused) < 1e-6
    assert uninstall_fused_blocks(q) == len(q.transformer_blocks)
    assert not any(is_fused(b) or "forward" in b.__dict__ for b in q.transformer_blocks)
    assert all("bias_out" not in m._buffers for m in q.modules())
    torch.testing.assert_close(_run(q, args, kw), unfused, rtol=0, atol=0)


def test_fused_with_triton_kernels_in_interpreter(seed):
    """Kernels (row quantizer, GEMM with GELU epilogue) inside the fused block vs the unfused reference."""
    model = make_tiny_transformer(seed=seed % 1000)
    args, kw = _inputs(model.config)
    ref32 = _run(model, args, kw)
    q = q8lib.quantize_(model, q8lib.Q8Config(backend="reference"), progress=False)
    unfused = _run(q, args, kw)
    install_fused_blocks(q, backend="test_triton_linear")
    fused = _run(q, args, kw)
    # rounding ties + fp32 summation order flip a few int8 values: measured 8e-4, vs Q8 error 4e-3 against fp32
    assert rel_err(unfused, fused) < 5e-3
    assert rel_err(ref32, fused) < 2 * rel_err(ref32, unfused) + 1e-3


def test_gelu_quantize_branch(seed, monkeypatch):
    """The cuBLAS branch of the FFN (GEMM without epilogue, then GELU+rotate+quantize) computes the same."""
    from q8lib import fused

    model = make_tiny_transformer(seed=seed % 1000)
    args, kw = _inputs(model.config)
    q = q8lib.quantize_(model, q8lib.Q8Config(weight_dtype="fp8_e4m3", backend="reference"), progress=False)
    install_fused_blocks(q, backend="test_triton_linear")
    base = _run(q, args, kw)
    monkeypatch.setattr(kl, "gemm_impl", lambda qd, dev: "scaled_mm")  # route _ffn to gelu_quantize
    calls = []
    real = kl.gelu_quantize
    monkeypatch.setattr(kl, "gelu_quantize", lambda *a: calls.append(1) or real(*a))
    out = _run(q, args, kw)
    assert calls, "gelu_quantize branch not taken"
    assert fused is not None and rel_err(base, out) < 2e-2  # fp8 ties after a different rounding point: measured ~5e-3


def test_ineligible_blocks_and_keep(seed):
    model = make_tiny_transformer(seed=seed % 1000)
    cfg = q8lib.Q8Config(backend="reference", keep_high_precision=q8lib.KEEP_HIGH_PRECISION + ("attn2",))
    q = q8lib.quantize_(model, cfg, progress=False)
    assert install_fused_blocks(q, backend="reference") == 0  # attn2 kept in bf16: diffusers' forward stays
    q2 = q8lib.quantize_(make_tiny_transformer(seed=1), q8lib.Q8Config(backend="reference", attention="keep"),
                         progress=False)
    assert install_if_fast(q2, q2._q8_config) == 0


def test_save_load_unaffected_by_fused(seed, tmp_path):
    model = make_tiny_transformer(seed=seed % 1000)
    args, kw = _inputs(model.config)
    q = q8lib.quantize_(model, q8lib.Q8Config(backend="reference"), progress=False)
    install_fused_blocks(q, backend="reference", bias_dtype=torch.bfloat16)
    before = _run(q, args, kw)
    q8lib.save_q8(q, tmp_path / "ck")
    loaded = q8lib.load_q8(tmp_path / "ck", backend="reference", torch_dtype=torch.float32)
    torch.testing.assert_close(_run(loaded, args, kw), before, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3", "int8"])
def test_gpu_default_install_and_compile(seed, weight_dtype):
    model = make_tiny_transformer(seed=seed % 1000, dtype=torch.bfloat16).cuda()
    args, kw = _inputs(model.config, device="cuda", dtype=torch.bfloat16)
    ref = _run(model, args, kw)
    q = q8lib.quantize_(copy.deepcopy(model), q8lib.Q8Config(weight_dtype=weight_dtype, attention="sdpa"), progress=False)
    assert all(is_fused(b) for b in q.transformer_blocks)
    fused = _run(q, args, kw)
    uninstall_fused_blocks(q)
    unfused = _run(q, args, kw)
    assert rel_err(unfused, fused) < 2e-2  # bf16 roundings in different places
    assert rel_err(ref, fused) < 0.08  # tiny random model in bf16: Q8 error ~0.02-0.04
    install_fused_blocks(q, fp8=False)
    torch._dynamo.reset()
    q.compile_repeated_blocks(fullgraph=True)
    assert rel_err(fused, _run(q, args, kw)) < 1e-2


def test_fused_block_compiles_fullgraph_cpu(seed, monkeypatch):
    """The fused forward on the triton backend's code path traces into one graph."""
    model = make_tiny_transformer(seed=seed % 1000)
    args, kw = _inputs(model.config)
    q = q8lib.quantize_(model, q8lib.Q8Config(weight_dtype="fp8_e4m3", attention="sdpa", backend="reference"),
                        progress=False)
    install_fused_blocks(q, fp8=False, backend="test_triton_linear")
    eager = _run(q, args, kw)
    torch._dynamo.reset()
    q.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(_run(q, args, kw), eager, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.parametrize("weight_dtype", ["int8", "fp8_e4m3"])
def test_reference_backend_compiles_fullgraph_cpu(seed, weight_dtype):
    """What a CPU user gets by default (the reference backend, diffusers' block forward) traces into one graph per
    block. Regression: the rotation's cached ±1 matrix (``hadamard_signs``) stopped Dynamo ("torch.* op returned
    non-Tensor")."""
    model = make_tiny_transformer(seed=seed % 1000)
    args, kw = _inputs(model.config)
    q = q8lib.quantize_(model, q8lib.Q8Config(weight_dtype=weight_dtype), progress=False)
    eager = _run(q, args, kw)
    torch._dynamo.reset()
    q.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(_run(q, args, kw), eager, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_key_lengths_cached_per_mask(seed):
    from q8lib.attention import mask_to_key_lengths
    from q8lib.fused_ops import once_per_mask

    def _key_lengths(mask, batch):
        return once_per_mask(mask, batch, mask_to_key_lengths, "_q8lib_key_lengths")

    mask = torch.zeros(2, 1, 8)
    mask[1, :, 5:] = -10000.0
    kl = _key_lengths(mask, 2)
    assert kl.tolist() == [8, 5] and _key_lengths(mask, 2) is kl  # second block: no recomputation
    mask[0, :, 6:] = -10000.0  # in-place change -> recomputed
    assert _key_lengths(mask, 2).tolist() == [6, 5]


def test_fused_block_under_inference_mode(seed):
    """Regression: the key-length cache read ``mask._version``, which inference tensors do not have."""
    import q8lib
    from q8lib.fused import install_fused_blocks
    from q8lib.tiny import make_tiny_transformer

    model = q8lib.quantize_(make_tiny_transformer(seed=seed), q8lib.Q8Config(weight_dtype="int8"), progress=False)
    install_fused_blocks(model)
    with torch.inference_mode():
        x, enc = torch.randn(2, 48, 8), torch.randn(2, 16, 32)
        mask = torch.ones(2, 16)
        mask[1, 10:] = 0
        out = model(x, enc, torch.tensor([500, 500]), mask, num_frames=3, height=4, width=4).sample
    assert out.shape == (2, 48, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compact_rope_tables(seed, dtype):
    """The fused install gives the model's RoPE one table for the batch, in the model dtype; undone on uninstall."""
    model = make_tiny_transformer(seed=seed % 1000, dtype=dtype)
    q = q8lib.quantize_(model, q8lib.Q8Config(backend="reference"), progress=False)
    x = torch.randn(3, 2 * 4 * 4, 8, dtype=dtype)
    want = [t.to(dtype) for t in q.rope(x, 2, 4, 4, (1 / 25, 32.0, 32.0))]
    assert install_fused_blocks(q, backend="reference") > 0
    got = q.rope(x, 2, 4, 4, (1 / 25, 32.0, 32.0))
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == w.shape and g.stride(0) == 0  # expanded, not copied
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    coords = torch.rand(3, 3, 32) * 4  # explicit per-sample coordinates: computed per sample
    got = q.rope(x, 2, 4, 4, None, coords)
    assert got[0].stride(0) != 0
    uninstall_fused_blocks(q)
    assert "forward" not in q.rope.__dict__ and q.rope(x, 2, 4, 4)[0].dtype == torch.float32
