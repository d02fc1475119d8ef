import pytest
import torch
from torch import nn

from q8lib import Q8GELU, Q8Linear, Q8RMSNorm
from helpers import rel_err, sqnr_db


@pytest.mark.parametrize("qdtype,min_db", [("int8", 37.0), ("fp8_e4m3", 26.0)])  # measured 39.6 / 28.6 dB
def test_q8linear_vs_linear(seed, qdtype, min_db):
    lin = nn.Linear(512, 256).double()
    x = torch.randn(4, 64, 512, dtype=torch.float64)
    q = Q8Linear.from_linear(lin, qdtype=qdtype)
    y = q(x.float())
    assert y.shape == (4, 64, 256) and y.dtype == torch.float32
    assert sqnr_db(lin(x).detach(), y) > min_db
    assert rel_err(lin.weight.detach(), q.dequantized_weight()) < 0.05


def test_q8linear_buffers_and_dtype_safety(seed):
    q = Q8Linear.from_linear(nn.Linear(64, 32))
    assert q.weight.dtype == torch.int8 and q.scales.dtype == torch.float32 and q.bias.dtype == torch.float32
    assert set(q.state_dict()) == {"weight", "scales", "bias"}
    q.to(torch.bfloat16)  # a pipeline-wide .to(dtype) must not touch 8-bit weights or fp32 scales
    assert q.weight.dtype == torch.int8 and q.scales.dtype == torch.float32
    assert q(torch.randn(3, 64).bfloat16()).dtype == torch.bfloat16
    f = Q8Linear.from_linear(nn.Linear(64, 32), qdtype="fp8")
    f.half()
    assert f.weight.dtype == torch.float8_e4m3fn


def test_q8linear_accepts_prequantized_input(seed):
    from q8lib.reference import quantize_activation_ref

    q = Q8Linear.from_linear(nn.Linear(128, 16))
    x = torch.randn(5, 128)
    xq, xs = quantize_activation_ref(x, torch.int8)
    assert torch.equal(q(xq, xs, out_dtype=torch.float32), q(x))


def test_q8gelu(seed):
    from diffusers.models.activations import GELU

    g = GELU(128, 256, approximate="tanh")
    x = torch.randn(6, 128)
    q = Q8GELU.from_gelu(g)
    assert sqnr_db(g(x).detach(), q(x)) > 30  # measured ~38 dB
    with pytest.raises(ValueError, match="tanh"):
        Q8GELU.from_gelu(GELU(8, 8, approximate="none"))


def test_q8rmsnorm_matches_diffusers_and_torch(seed):
    from diffusers.models.normalization import RMSNorm

    x = torch.randn(2, 7, 64)
    d = RMSNorm(64, eps=1e-6, elementwise_affine=False)
    assert torch.allclose(Q8RMSNorm.from_norm(d)(x), d(x), atol=1e-6)
    t = nn.RMSNorm(64, eps=1e-5)
    nn.init.normal_(t.weight)
    assert torch.allclose(Q8RMSNorm.from_norm(t)(x), t(x).detach(), atol=1e-5)
    scale, shift = torch.randn(2, 1, 64), torch.randn(2, 1, 64)
    assert torch.allclose(Q8RMSNorm.from_norm(d)(x, scale, shift), d(x) * (1 + scale) + shift, atol=1e-5)


def test_unsupported_linear_dims_raise():
    with pytest.raises(ValueError, match="power-of-two"):
        Q8Linear.from_linear(nn.Linear(96, 8))
