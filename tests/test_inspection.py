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


def test_converted_modules_are_what_quantize_replaces():
    """The report lists each module quantize_ replaces once (a GELU as its projection, the linear that runs
    with the GELU fused), before and after conversion: 12 per block, 336 in the 2B architecture."""
    import copy

    from q8lib.convert import modules_to_convert
    from q8lib.tiny import make_tiny_transformer

    with torch.device("meta"):
        big = LTXVideoTransformer3DModel(**LTX_2B_CONFIG)
    rep = q8lib.inspect_transformer(big)
    assert len(rep.converted) == len(modules_to_convert(big, q8lib.Q8Config())) == 28 * 12
    assert rep.converted_by_kind() == {"self-attn linear": 112, "cross-attn linear": 112, "feed-forward linear": 56,
                                       "block norm": 56}
    assert rep.converted_summary().startswith("336 converted modules = 28 blocks x 12 (4 self-attn linears,")
    tiny = make_tiny_transformer()
    before = q8lib.inspect_transformer(tiny).converted
    after = q8lib.inspect_transformer(q8lib.quantize_(copy.deepcopy(tiny), progress=False)).converted
    assert sorted(before) == sorted(after) and len(before) == tiny.config.num_layers * 12
