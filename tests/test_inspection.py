"""q8lib.inspection: parameter and FLOP counts per module type."""
import torch
from diffusers import LTXVideoTransformer3DModel

import q8lib
from q8lib.models import LTX_2B_CONFIG


def test_inspect_counts_flops_of_2b_on_meta():
    with torch.device("meta"):
        big = LTXVideoTransformer3DModel(**LTX_2B_CONFIG)
    rep = q8lib.inspect_transformer(big, num_tokens=3630, text_tokens=128, batch=2)
    block_linears = sum(v for k, v in rep.flops.items() if "linear" in k)
    assert abs(block_linears / 1e12 - 23.9) < 0.2  # the 23.9 TFLOP of block linears per forward
    assert 1.8e9 < rep.total_params < 2.1e9
