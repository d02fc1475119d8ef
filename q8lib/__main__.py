"""``python -m q8lib`` / ``q8lib``: command line entry point."""
from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    """Build the tiny LTX transformer, convert it to Q8, run both on one input; print error, size, time."""
    import copy
    import time

    import torch

    from . import Q8Config, inspect_transformer, quantize_
    from .tiny import make_tiny_transformer

    torch.manual_seed(args.seed)
    model = make_tiny_transformer(seed=args.seed)
    cfg = model.config
    frames, height, width, text = 3, 8, 8, 16
    x = torch.randn(args.batch, frames * height * width, cfg.in_channels)
    enc = torch.randn(args.batch, text, cfg.caption_channels)
    mask = torch.ones(args.batch, text)
    mask[-1, text // 2:] = 0  # right padding on the last sample
    t = torch.full((args.batch,), 500)
    kw = dict(num_frames=frames, height=height, width=width)

    def run(m):
        start = time.perf_counter()
        with torch.no_grad():
            y = m(x, enc, t, mask, **kw).sample
        return y, (time.perf_counter() - start) * 1e3

    def nbytes(m):
        return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))

    ref, ms_ref = run(model)
    q8 = quantize_(copy.deepcopy(model), Q8Config(weight_dtype=args.dtype, attention=args.attention), progress=False)
    out, ms_q8 = run(q8)
    rel = ((out - ref).norm() / ref.norm()).item()
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    print(inspect_transformer(model, num_tokens=frames * height * width, text_tokens=text, batch=args.batch).table())
    print(f"\nQ8 ({args.dtype}, attention={args.attention}, backend={q8._q8_config.backend}) vs fp32 on the tiny default:")
    print(f"  relative error {rel:.4f}   cosine {cos:.6f}")
    print(f"  weights+buffers {nbytes(model) / 1e6:.2f} MB -> {nbytes(q8) / 1e6:.2f} MB")
    print(f"  forward {ms_ref:.1f} ms -> {ms_q8:.1f} ms (CPU reference path; speed comes from the GPU backends)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="q8lib", description="8-bit inference of LTX-Video in diffusers")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="convert the embedded tiny LTX transformer to Q8 and compare")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batch", type=int, default=2)
    demo.add_argument("--dtype", default="int8", choices=["int8", "fp8_e4m3"])
    demo.add_argument("--attention", default="fp8", choices=["fp8", "sdpa", "keep"])
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
