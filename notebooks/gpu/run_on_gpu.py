"""Execute the GPU variants notebooks/gpu/<name>.ipynb on this machine's GPU (q8lib.tutorial.gpu_run).

    python notebooks/gpu/run_on_gpu.py                      # all variants, copies to $OUT (if set)
    python notebooks/gpu/run_on_gpu.py 05_q8_attention_inference --out /tmp/out --deadline-s 300

Each notebook is executed in place and its GPU recorded in metadata.q8lib.executed_on; the executed notebooks,
their artifacts (notebook 05's side-by-side mp4) and gpu_run.json (every record) are copied to --out. Exit status
1 when a notebook failed or was skipped. See notebooks/gpu/README.md for the device command.
"""
import argparse
import os
import sys
from pathlib import Path

NB_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(NB_DIR.parent))  # the q8lib of this checkout

from q8lib.tutorial.gpu_run import MAX_NOTEBOOK_MB, run_variants  # noqa: E402
from q8lib.tutorial.gpu_variants import VARIANTS  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"variants (default: all): {', '.join(VARIANTS)}")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="copy the results here (default: $OUT)")
    ap.add_argument("--deadline-s", type=float, default=540,
                    help="skip a notebook whose estimated time would end later than this (default 540)")
    ap.add_argument("--cell-timeout", type=int, default=480, help="seconds one cell may take (default 480)")
    ap.add_argument("--max-mb", type=float, default=MAX_NOTEBOOK_MB, help="size cap of each executed notebook")
    ap.add_argument("--allow-cpu", action="store_true",
                    help="run without a GPU, to try the mechanics (such notebooks must not be committed)")
    a = ap.parse_args(argv)
    unknown = [n for n in a.names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; the variants are {list(VARIANTS)}")
    records = run_variants(NB_DIR, a.names or None, a.out, a.deadline_s, cell_timeout=a.cell_timeout,
                           max_mb=a.max_mb, allow_cpu=a.allow_cpu)
    return 1 if any("error" in r or "skipped" in r for r in records.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
