"""cuDNN's FP8 SDPA (``nvidia-cudnn-frontend``) for the attention benchmark: GPU only, not part of q8lib.

Issue #14 asks whether cuDNN's FP8 attention engine, fast at head dim 128, could sit behind q8lib's own producers.
The CPU emulation (``cudnn_fp8_emulation.py``) answered the accuracy half (e4m3's floor of ~0.05 on Gaussian inputs,
like q8lib's own FP8 kernel); this measures the speed half at LTX's shapes in the same run as cuDNN's bf16 SDPA and
q8lib's FP8 kernel. What cuDNN takes on Hopper: e4m3 q/k/v with one descale each (per tensor), ``P`` quantized with
``scale_s``, and an e4m3 output with ``scale_o`` (a bf16 output is Blackwell-only).

Scales used here (what a q8lib producer could do without an extra pass):

* q, k, v: one scale per tensor, ``448 / amax`` (here from ``torch.amax``; a producer would use a static bound:
  after LTX's RMSNorm across heads a token's entries are at most ``sqrt(H * D) * max|weight|``, a bound rotations
  and RoPE keep).
* P in [0, 1]: ``scale_s = 448``.
* O: every output is a convex combination of v's entries, so ``|O| <= amax(v)`` and ``scale_o = 448 / amax(v)``
  never overflows; the e4m3 codes could then feed ``to_out``'s 8-bit GEMM as they are (one scale for every row).

    from cudnn_fp8_sdpa import CudnnFP8SDPA, per_tensor_e4m3
    (q8, dq), (k8, dk), (v8, dv) = (per_tensor_e4m3(t) for t in (q, k, v))   # [B, H, S, D] views
    attn = CudnnFP8SDPA(q8, k8, v8)
    out = attn(q8, k8, v8, dq, dk, dv) * attn.descale_o(dv)                    # e4m3 codes -> real values
"""
from __future__ import annotations

import math

import torch

E4M3_MAX = 448.0


def per_tensor_e4m3(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (any strides) -> ``(e4m3 codes with x's strides, descale [1, 1, 1, 1] float32)``, one scale for the
    whole tensor: ``codes * descale ~ x``."""
    amax = x.detach().abs().amax().float().clamp_min(1e-12)
    codes = (x.float() * (E4M3_MAX / amax)).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return codes, (amax / E4M3_MAX).reshape(1, 1, 1, 1)


class CudnnFP8SDPA:
    """One cuDNN FP8 SDPA execution plan for e4m3 ``q [B, H, Sq, D]``, ``k``/``v [B, H, Sk, D]`` with the strides
    of the tensors given here (e.g. ``[B, H, S, D]`` views of ``[B, S, H, D]`` projections); no mask, no causality.
    Calling it runs the plan on the current stream and returns the e4m3 output ``[B, H, Sq, D]`` (a view of a
    ``[B, Sq, H, D]`` buffer, reused between calls)."""

    def __init__(self, q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor):
        import cudnn  # nvidia-cudnn-frontend

        self.cudnn = cudnn
        B, H, Sq, D = q8.shape
        dev = q8.device
        self.handle = cudnn.create_handle()
        e4m3, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        g = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=f32, compute_data_type=f32, handle=self.handle)

        def fp8(name, t):
            return g.tensor(name=name, dim=list(t.shape), stride=list(t.stride()), data_type=e4m3)

        def scalar(name):
            return g.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=f32)

        self.q, self.k, self.v = fp8("q", q8), fp8("k", k8), fp8("v", v8)
        self.scalars = {n: scalar(n) for n in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s",
                                                "scale_o")}
        common = dict(q=self.q, k=self.k, v=self.v, attn_scale=1.0 / math.sqrt(D), use_causal_mask=False,
                      **self.scalars)
        try:  # frontend >= 1.11 names it generate_stats; earlier ones is_inference
            o, _, amax_s, amax_o = g.sdpa_fp8(generate_stats=False, **common)
        except TypeError:
            o, _, amax_s, amax_o = g.sdpa_fp8(is_inference=True, **common)
        self.out = torch.empty(B, Sq, H, D, device=dev, dtype=torch.float8_e4m3fn).transpose(1, 2)
        o.set_output(True).set_dim(list(self.out.shape)).set_stride(list(self.out.stride())).set_data_type(e4m3)
        self.amax = torch.zeros(2, 1, 1, 1, 1, device=dev, dtype=torch.float32)
        for t in (amax_s, amax_o):
            t.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        self.graph, self.o, self.amax_s, self.amax_o = g, o, amax_s, amax_o
        self.workspace = torch.empty(g.get_workspace_size(), device=dev, dtype=torch.uint8)
        self.scale_s = torch.full((1, 1, 1, 1), E4M3_MAX, device=dev)
        self.descale_s = torch.full((1, 1, 1, 1), 1.0 / E4M3_MAX, device=dev)

    @staticmethod
    def descale_o(descale_v: torch.Tensor) -> torch.Tensor:
        """The output's descale for :func:`per_tensor_e4m3` values: ``amax(v) / 448`` is ``descale_v`` itself."""
        return descale_v

    def __call__(self, q8, k8, v8, descale_q, descale_k, descale_v) -> torch.Tensor:
        self.cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream(q8.device).cuda_stream)
        pack = {self.q: q8, self.k: k8, self.v: v8, self.o: self.out, self.amax_s: self.amax[0],
                self.amax_o: self.amax[1]}
        values = {"descale_q": descale_q, "descale_k": descale_k, "descale_v": descale_v,
                  "descale_s": self.descale_s, "scale_s": self.scale_s, "scale_o": 1.0 / descale_v}
        pack.update({self.scalars[n]: t for n, t in values.items()})
        self.graph.execute(pack, self.workspace, handle=self.handle)
        return self.out
