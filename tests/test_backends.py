import pytest
import torch

import q8lib
from q8lib import BackendUnavailableError, get_backend, list_backends, resolve_backend


def test_reference_always_available():
    assert list_backends()["reference"] is None
    assert resolve_backend("auto", "cpu").name == "reference"


def test_unknown_backend_names_known_ones():
    with pytest.raises(BackendUnavailableError, match="reference"):
        get_backend("cutlass9000")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_triton_unavailable_on_cpu_says_why():
    assert "CUDA" in list_backends()["triton"]
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
        get_backend("triton")


def test_explicit_unavailable_backend_fails_in_module(seed):
    if list_backends()["triton"] is None:
        pytest.skip("triton is available here")
    lin = q8lib.Q8Linear.from_linear(torch.nn.Linear(16, 8), backend="triton")
    with pytest.raises(BackendUnavailableError):
        lin(torch.randn(2, 16))


# --- one route from a module to a kernel (kernel-layer issue, item 1) ------------------------------
def _interface():
    from q8lib.backends import Backend

    return {n for n, v in vars(Backend).items() if callable(v) and not n.startswith("_")} - {
        "unavailable_reason", "supports_device"}


def test_triton_backend_binds_every_op():
    """Every op of the interface has its triton binding (a missing one would silently run the reference)."""
    pytest.importorskip("triton")
    from q8lib.kernels import TritonBackend

    missing = sorted(n for n in _interface() if n not in vars(TritonBackend))
    assert not missing, f"TritonBackend does not bind {missing}"


def test_ltx_layer_reaches_kernels_only_through_the_backend():
    """No kernel-module imports, backend-name tests or optional-op probing outside the backends."""
    import pathlib
    import re

    root = pathlib.Path(q8lib.__file__).parent
    compute = ("modules.py", "fused.py", "attention.py", "convert.py", "checkpoint.py", "inspection.py",
               "cudagraph.py", "parallel.py", "lora.py", "lora_layer.py", "tutorial/patching.py")
    others = ("compare.py", "metrics.py", "models.py") + tuple(
        str(p.relative_to(root)) for sub in ("app", "tiny", "tutorial") for p in sorted((root / sub).glob("*.py")))
    assert len(others) > 10
    bad = []
    for name in compute + tuple(o for o in others if o not in compute):
        text = (root / name).read_text()
        patterns = [r"from \.+kernels", r"q8lib\.kernels"]  # (q8lib.bench measures kernels below the API)
        if name in compute:  # dispatch on a backend's name or on which methods it has
            patterns += [r"\.name\s*[!=]=\s*[\"']", r"hasattr\(be\b"]
        for pattern in patterns:
            bad += [f"{name}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert not bad, bad


class _Recording(q8lib.Backend):
    """The reference backend, recording which interface ops the model calls."""

    name = "test_recording"
    priority = -1

    def __init__(self):
        self.calls = set()

    def __getattribute__(self, name):
        if not name.startswith("_") and name in _interface():
            object.__getattribute__(self, "calls").add(name)
        return object.__getattribute__(self, name)


@pytest.mark.parametrize("fused", [False, True])
def test_q8_forward_runs_on_backend_ops(seed, fused):
    """The unfused and the fused forward compute through the interface ops only, the fused one through
    the fused ops (quantizer shared by q/k/v, residual add + quantize, attention core)."""
    from q8lib.backends import register_backend
    from q8lib.fused import install_fused_blocks
    from q8lib.tiny import make_tiny_transformer

    rec = register_backend(_Recording())
    model = q8lib.quantize_(make_tiny_transformer(seed=seed % 1000),
                            q8lib.Q8Config(backend="test_recording", attention="sdpa"), progress=False)
    if fused:
        assert install_fused_blocks(model, fp8=False, backend="test_recording") > 0
    cfg = model.config
    x = torch.randn(1, 8, cfg.in_channels)
    enc = torch.randn(1, 4, cfg.caption_channels)
    rec.calls.clear()
    with torch.no_grad():
        model(x, enc, torch.tensor([500.0]), torch.ones(1, 4), num_frames=2, height=2, width=2)
    want = {"quantize_activation", "matmul", "attention_core", "attention"}
    if fused:
        want |= {"rms_norm_quantize", "add_quantize", "gemm_fuses_gelu"}
    assert want <= rec.calls, sorted(want - rec.calls)


def test_backend_written_before_key_rotary_emb_still_runs_ltx1_attention(seed):
    """``attention_core`` gained ``key_rotary_emb`` (LTX-2's a2v/v2a); a backend overriding it with the earlier
    signature keeps working wherever the keys share the queries' tables (every LTX-1 attention)."""
    from q8lib.attention import q8_attention_core
    from q8lib.backends import Backend, register_backend
    from helpers import ltx_attention

    class _Old(Backend):
        name = "test_old_attention_core"
        priority = -1

        def attention_core(self, attn, query, key, value, image_rotary_emb=None, key_lengths=None, mode="fp8"):
            return super().attention_core(attn, query, key, value, image_rotary_emb, key_lengths, mode)

    register_backend(_Old())
    attn = ltx_attention(False, 64, 2, "cpu")
    g = torch.Generator().manual_seed(seed % 1000)
    q, k, v = (torch.randn(2, 12, 128, generator=g) for _ in range(3))
    ang = torch.randn(2, 12, 64, generator=g).repeat_interleave(2, -1)
    rope = (ang.cos(), ang.sin())
    with torch.no_grad():
        got = q8_attention_core(attn, q, k, v, rope, None, "sdpa", "test_old_attention_core")
        want = q8_attention_core(attn, q, k, v, rope, None, "sdpa", "reference")
    torch.testing.assert_close(got, want)
