"""Which q8lib kernels fail to compile under inductor (triton_op + wrap_triton) on this GPU, and why (GPU; not a test).

    python benchmarks/probe_inductor.py [case ...]
    TORCHINDUCTOR_COMPILE_THREADS=1 python benchmarks/probe_inductor.py norm_none_fp8   # MLIR diagnostics in-process

Each case compiles one op with ``torch.compile(fullgraph=True)`` and compares it with the eager op. This is how
session 5 found the fp64-float-argument bug (benchmarks/NOTES_linear.md).
"""
import sys

import torch
from torch.library import triton_op
from q8lib.kernels import attn_producers as KA
from q8lib.kernels import linear as L
from q8lib.quant import FP8, INT8
dev = "cuda"
torch.manual_seed(0)
x = torch.randn(2, 3630, 2048, device=dev, dtype=torch.bfloat16)
sc = torch.randn(2, 1, 2048, device=dev, dtype=torch.bfloat16) * .1
cases = {
  "plain_full_fp8": lambda: L.quantize_activation(x, FP8, None),
  "plain_none_fp8": lambda: L.quantize_activation(x, FP8, 1),
  "plain_none_int8": lambda: L.quantize_activation(x, INT8, 1),
  "norm_none_fp8": lambda: L.rms_norm_quantize(x, None, 1e-6, sc, sc, FP8, 1),
  "add_none_fp8": lambda: L.add_quantize(x, x, sc, FP8, 1),
  "gelu_none_fp8": lambda: L.gelu_quantize(x, FP8, 1),
}
q = x.unflatten(2, (32, 64))
w = torch.ones(2048, device=dev, dtype=torch.bfloat16)
qk_vis = triton_op("probe::quant_qk", KA._quant_qk_impl, mutates_args=())
v_vis = triton_op("probe::quant_v", KA._quant_v_impl, mutates_args=())
cases["quant_qk_tritonop"] = lambda: qk_vis(q, w, 1e-6, None, None, 0.18)
cases["quant_v_tritonop"] = lambda: v_vis(q)
only = sys.argv[1:] or list(cases)
for name in only:
    torch._dynamo.reset()
    try:
        f = torch.compile(cases[name], fullgraph=True)
        out = f(); ref = cases[name]()
        torch.cuda.synchronize()
        d = max((a.float() - b.float()).abs().max().item() for a, b in zip(out, ref))
        print(f"{name}: OK max diff vs eager {d}", flush=True)
    except Exception as e:
        print(f"{name}: FAIL {type(e).__name__}: {str(e)[-600:]}", flush=True)
