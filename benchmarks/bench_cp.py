"""Q8 LTX transformer under diffusers' context parallelism (Ulysses), 1 vs N ranks.

    torchrun --nproc-per-node 2 benchmarks/bench_cp.py                    # GPUs (NCCL), shape of record
    torchrun --nproc-per-node 2 benchmarks/bench_cp.py --smoke --device cpu  # CPU (gloo), tiny model

Every rank builds the same seeded transformer, runs it once without parallelism (the 1-rank
reference, same weights and inputs), then enables ``ContextParallelConfig(ulysses_degree=N)`` and
runs again; the CP output must match the reference within ``--tol`` (relative error). On GPUs it
times the forward (CUDA events on GPUs, wall clock on CPU; warm-up, median) and records per-GPU peak memory, for bf16
(plain linears, q8lib's SDPA processor, which also handles the text mask under Ulysses) and Q8
(8-bit linears + FP8 attention). Rank 0 writes the JSON (``--out``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys

import torch
import torch.distributed as dist

import q8lib
from q8lib.models import LTX_2B_CONFIG, dummy_inputs
from q8lib.tiny import make_tiny_transformer
from q8lib.timing import time_ms

# Multicast must stay off on the lent multi-GPU machines (see the device tool's KINDS.md).
for _k, _v in dict(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1").items():
    os.environ.setdefault(_k, _v)


def _shape(args):
    if args.smoke:
        return dict(frames=2, height=4, width=4, text=16, batch=2)
    # pixels -> latents: 8x temporal (+1), 32x spatial compression of the LTX VAE
    return dict(frames=(args.frames - 1) // 8 + 1, height=args.height // 32, width=args.width // 32,
                text=args.text_tokens, batch=2)


def _build(args, device, variant):
    torch.manual_seed(0)
    if args.smoke:
        model = make_tiny_transformer(seed=0)
    else:
        from diffusers import LTXVideoTransformer3DModel

        with torch.device(device):
            model = LTXVideoTransformer3DModel(**LTX_2B_CONFIG)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    model = model.to(device=device, dtype=dtype).eval()
    if variant == "q8":
        q8lib.quantize_(model, q8lib.Q8Config(weight_dtype=args.weight_dtype), attention="fp8", progress=False)
    else:
        q8lib.set_q8_attention(model, fp8=False)
    return model, dtype


def _inputs(shape, cfg, device, dtype):
    """Seeded inputs with a right-padded prompt on the last sample (q8lib.models.dummy_inputs)."""
    return dummy_inputs(dict(cfg), shape["batch"], shape["frames"], shape["height"], shape["width"], shape["text"],
                        seed=1, device=device, dtype=dtype)


def _median_ms(fn, warmup, iters):
    return statistics.median(time_ms(fn, iters, warmup))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--smoke", action="store_true", help="tiny model and shape (CI on CPU)")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=704)
    p.add_argument("--text-tokens", type=int, default=128)
    p.add_argument("--variants", default="bf16,q8")
    p.add_argument("--weight-dtype", default="fp8_e4m3")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--tol", type=float, default=0.02)
    p.add_argument("--out", default=None, help="JSON path written by rank 0")
    args = p.parse_args(argv)

    from diffusers import ContextParallelConfig

    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
        # diffusers' parallel config picks `rank % accelerator count`; with no accelerator that count is 0
        torch.accelerator.device_count = lambda: 1
    shape = _shape(args)
    results, ok = {}, True
    for variant in args.variants.split(","):
        model, dtype = _build(args, device, variant)
        inputs = dict(_inputs(shape, model.config, device, dtype), return_dict=False)
        with torch.no_grad():
            ref = model(**inputs)[0]
            t1 = _median_ms(lambda: model(**inputs), args.warmup, args.iters)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            if world > 1:
                model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
            out = model(**inputs)[0]
            tn = _median_ms(lambda: model(**inputs), args.warmup, args.iters)
        rel = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        ok &= rel <= args.tol
        results[variant] = dict(rel_err_cp_vs_single=rel, fwd_ms_single=t1, fwd_ms_cp=tn,
                                peak_mb_per_gpu=torch.cuda.max_memory_allocated() / 2**20 if cuda else None)
        if rank == 0:
            print(f"{variant:6s} world={world} rel_err(CP vs 1 rank)={rel:.2e} "
                  f"fwd 1 rank={t1:.1f} ms, CP={tn:.1f} ms", flush=True)
        del model
        if cuda:
            torch.cuda.empty_cache()
    if rank == 0 and args.out:
        import diffusers

        doc = dict(
            device=torch.cuda.get_device_name() if cuda else "cpu", world_size=world, parallelism="ulysses",
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            versions=dict(torch=torch.__version__, diffusers=diffusers.__version__),
            shape=dict(**shape, tokens=shape["frames"] * shape["height"] * shape["width"]), results=results)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=2)
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
