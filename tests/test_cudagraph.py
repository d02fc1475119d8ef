"""Whole-forward CUDA graphs (q8lib.cudagraph) on the tiny LTX transformer: replays equal eager forwards."""
import copy

import pytest
import torch

import q8lib
from helpers import rel_err
from q8lib.cudagraph import CUDAGraphForward
from q8lib.tiny import make_tiny_transformer


def _inputs(cfg, seed, text=8, pad_from=None):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(2, 2 * 4 * 4, cfg.in_channels, device="cuda", dtype=torch.bfloat16, generator=g)
    enc = torch.randn(2, text, cfg.caption_channels, device="cuda", dtype=torch.bfloat16, generator=g)
    mask = torch.ones(2, text, device="cuda", dtype=torch.bfloat16)
    if pad_from is not None:
        mask[-1, pad_from:] = 0  # right padding on the second sample: the graph must see new masks
    t = torch.rand(2, device="cuda", generator=g) * 1000
    return (x, enc, t, mask), dict(num_frames=2, height=4, width=4)


def test_needs_cuda_on_cpu_machines():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(RuntimeError, match="CUDA"):
        CUDAGraphForward(torch.nn.Linear(2, 2))


@pytest.mark.gpu
@pytest.mark.parametrize("attention", ["fp8", "sdpa"])
@pytest.mark.parametrize("compiled", [False, True])
def test_graph_replays_match_eager(seed, attention, compiled):
    model = make_tiny_transformer(seed=seed % 1000, dtype=torch.bfloat16).cuda()
    q = q8lib.quantize_(copy.deepcopy(model), q8lib.Q8Config(), attention=attention, progress=False)
    torch._dynamo.reset()
    if compiled:
        q.compile_repeated_blocks(fullgraph=True)
    fwd = CUDAGraphForward(q)
    with torch.inference_mode():
        for i, pad in enumerate([None, 3, 6, None]):  # new values (and masks) each call: one graph
            args, kw = _inputs(q.config, seed + i, pad_from=pad)
            want = q(*args, **kw).sample
            got = fwd(*args, **kw).sample
            assert torch.isfinite(got).all()
            assert rel_err(want, got) < 1e-2, (i, rel_err(want, got))  # same kernels; compiled: fusion order
        assert len(fwd.graphs) == 1
        first = fwd(*_inputs(q.config, seed)[0], **kw).sample
        again = fwd(*_inputs(q.config, seed + 1)[0], **kw).sample
        assert not torch.equal(first, again)  # outputs are cloned out of the graph's memory
        args, kw = _inputs(q.config, seed, text=16)
        fwd(*args, **kw)
        assert len(fwd.graphs) == 2  # a new text length is a new signature
