"""Write the GPU variants notebooks/gpu/<name>.ipynb from the CPU notebooks (q8lib.tutorial.gpu_variants).

    python notebooks/gpu/make_variants.py            # write the variants that are out of sync, keep the others
    python notebooks/gpu/make_variants.py --force    # rewrite all (GPU outputs are dropped)
    python notebooks/gpu/make_variants.py --check    # exit 1 and say why when one is out of sync
    python notebooks/gpu/make_variants.py --add-cpu-cells 07_ltx2_in_8_bits   # keep the GPU run, add new cells
                                                     # that only read committed results, with the CPU run's outputs

Run it after changing a CPU notebook's cells (after a merge too); tests/test_notebooks_gpu_variants.py fails
until then. A rewritten variant has no outputs until the next GPU run (notebooks/gpu/README.md).
"""
import argparse
import sys
from pathlib import Path

NB_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(NB_DIR.parent))  # the q8lib of this checkout

from q8lib.tutorial.gpu_variants import VARIANTS, add_cpu_cells, variant_problems, write_variants  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"variants (default: all): {', '.join(VARIANTS)}")
    ap.add_argument("--force", action="store_true", help="rewrite even variants in sync (drops their GPU outputs)")
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when a variant is out of sync")
    ap.add_argument("--add-cpu-cells", action="store_true",
                    help="for executed variants: add the CPU notebook's new cells with its outputs, marked (cells "
                         "that only read committed results; edited code still needs a GPU run)")
    a = ap.parse_args(argv)
    names = a.names or list(VARIANTS)
    if a.add_cpu_cells:
        for n in names:
            if variant_problems(NB_DIR, n):
                print(f"notebooks/gpu/{n}.ipynb: {add_cpu_cells(NB_DIR, n)} code cell(s) added with CPU outputs")
        return 0
    if a.check:
        bad = {n: p for n in names if (p := variant_problems(NB_DIR, n))}
        for n, p in bad.items():
            print(f"{n}: " + "; ".join(p))
        return 1 if bad else 0
    for name, what in write_variants(NB_DIR, names, force=a.force).items():
        print(f"notebooks/gpu/{name}.ipynb: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
