"""Does the Hadamard rotation help each 8-bit format end to end? (CPU; not a test)

    python benchmarks/rotation_accuracy.py --out benchmarks/results/accuracy/rotation_accuracy_tiny.json

Generates clips with the trained tiny LTX default in fp32 and with its transformer quantized (reference backend,
SDPA attention) as int8 / fp8_e4m3, with the full-width rotation (``hadamard_block=None``) and without
(``hadamard_block=1``); reports PSNR of the decoded frames and the relative error against the fp32 clips.
Behind the ``Q8Config`` default (full rotation for int8, none for fp8_e4m3): benchmarks/NOTES_linear.md.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import warnings
from pathlib import Path

import torch

from q8lib import Q8Config, quantize_, tiny
from q8lib.metrics import psnr
from q8lib.versions import package_versions

PROMPTS = ["a red circle moving right", "a blue square moving down"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results/accuracy/rotation_accuracy_tiny.json")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    pipe = tiny.default_pipeline()
    base = pipe.transformer
    shape = dict(num_frames=9, height=64, width=64)

    def run(transformer):
        pipe.transformer = transformer
        return torch.stack([pipe(prompt=p, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(i),
                                 output_type="pt", **shape).frames[0] for i, p in enumerate(PROMPTS)])

    ref = run(base)
    results = {}
    for wd in ("int8", "fp8_e4m3"):
        for hb, tag in ((None, "full"), (1, "none")):
            m = copy.deepcopy(base)
            quantize_(m, Q8Config(weight_dtype=wd, hadamard_block=hb), backend="reference", attention="sdpa",
                      progress=False)
            v = run(m)
            results[f"{wd}/{tag}"] = {"psnr_db": sum(psnr(a, b).mean().item() for a, b in zip(v, ref)) / len(v),
                                      "rel_err": ((v - ref).norm() / ref.norm()).item()}
            print(wd, tag, results[f"{wd}/{tag}"], flush=True)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "versions": package_versions("diffusers"), "model": "trained tiny LTX default (q8lib/assets)",
              "shape": dict(shape, steps=args.steps, prompts=PROMPTS, seeds=list(range(len(PROMPTS)))),
              "reference": "the same pipeline in fp32", "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
