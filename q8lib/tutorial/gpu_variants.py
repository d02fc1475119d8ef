"""GPU variants of the tutorial notebooks: the same cells, run on a GPU with full-size random-weight models.

The notebooks in ``notebooks/`` are executed (and tested by strict nbval) on a CPU with the embedded tiny model.
A GPU variant, ``notebooks/gpu/<name>.ipynb``, is a copy of one of them whose cells are the CPU source's, in the
same order with the same text, behind one generated markdown cell (the banner) that says what the copy is. Its
metadata ``q8lib.gpu_run`` holds the environment the GPU run uses (``Q8_MODEL=random-2b``: the real loading code
path with random weights, since real weights cannot be downloaded on the GPU machine; ``Q8_DEVICE=cuda``), and
``q8lib.executed_on`` what ran it: ``None`` until the first GPU run, then the GPU's name and capability, the
torch/triton/diffusers versions and the date (:func:`gpu_record`).

* :func:`write_variants` (``python notebooks/gpu/make_variants.py``) writes the variants from the CPU notebooks;
  a variant already in sync keeps its GPU outputs unless ``force``.
* :func:`add_cpu_cells` (``make_variants.py --add-cpu-cells NAME``): cells added to a CPU notebook after its
  variant's GPU run go into the executed variant with the CPU run's outputs, marked (``metadata.q8lib.output_from =
  "cpu"``, no execution count) and counted in the banner, for cells that only read committed results; edited code
  cells still need a GPU run.
* :func:`variant_problems` says how a variant differs from what :func:`write_variants` would write
  (tests/test_notebooks_gpu_variants.py fails on any difference, naming the command that regenerates it).
* :func:`execute_variant` (``python notebooks/gpu/run_on_gpu.py``, :mod:`q8lib.tutorial.gpu_run`) runs one variant.

Notebooks are read and written as plain JSON (one-space indent, as nbformat writes them), so nothing here needs
the notebooks extra; only execution needs ``nbclient`` (a papermill dependency).
"""
from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

__all__ = ["VARIANTS", "COMMON_ENV", "GPU_DIR", "REGENERATE", "RUN", "variant_env", "make_variant",
           "write_variants", "variant_problems", "is_executed", "banner", "read_notebook", "write_notebook",
           "add_cpu_cells", "cpu_output_cells"]

GPU_DIR = "gpu"  # under notebooks/
REGENERATE = "python notebooks/gpu/make_variants.py"
RUN = "python notebooks/gpu/run_on_gpu.py"
BANNER_TAG = "q8lib-gpu-variant"
# Every GPU run: the GPU, bf16 baselines, seed 0, offline (the GPU machine has no network), no progress bars.
COMMON_ENV = {"Q8_DEVICE": "cuda", "Q8_DTYPE": "bf16", "Q8_SEED": "0", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
# The notebooks that have something to show on a GPU. 02 (the diffusers patch audit, tiny model on the CPU) and
# 06 (plots of the committed result files) run nothing there that the CPU run does not already show.
# est_s: estimated seconds on one H200 including the kernel start (the executor skips a notebook that would end
# past its deadline); measured on one H200 (triton 3.6): session 9: 01 22 s, 03 49 s, 05 241 s (before its warm-ups);
# session 10: 04 41 s, 07 141 s, 08 51 s, 05 not finished within 410 s (where its time goes is not known yet: the
# executor now logs each cell's seconds). artifacts: files the run writes (relative to notebooks/) that the executor
# copies out.
VARIANTS = {
    "01_inspect_ltx_transformer": dict(
        env={"Q8_MODEL": "random-2b"}, est_s=35,
        shows="the full-size 2B transformer built on the GPU (random weights), its blocks, parameter and FLOP shares"),
    "03_convert_quantize": dict(
        env={"Q8_MODEL": "random-2b"}, est_s=70,
        shows="conversion, save/load and size on disk of the full-size 2B transformer, and its fp8/int8 outputs "
              "through the GPU kernels against bf16"),
    "04_swap_layers": dict(
        env={"Q8_MODEL": "random-2b"}, est_s=50,
        shows="the layer swaps on the full-size 2B transformer and the per-layer SQNR of all 28 blocks on the GPU"),
    "05_q8_attention_inference": dict(
        env={"Q8_MODEL": "random-2b"}, est_s=480,
        artifacts=["../outputs/videos/05_random-2b_side_by_side.mp4"],
        shows="a whole LTXPipeline run at the full size (81 frames of 480x704, 50 steps) with the bf16 and then the "
              "Q8 transformer (Triton kernels, FP8 attention): timings and memory on the GPU; random weights, so "
              "the videos are noise and the PSNR/SSIM only say how close the two runs are"),
    "08_making_it_fast": dict(
        env={}, est_s=60,
        shows="every step live on the GPU with the tiny model (eager, regional compile, CUDA graph, fused kernels), "
              "timed with CUDA events; the H200 story from the committed JSON as on the CPU"),
    "07_ltx2_in_8_bits": dict(
        env={}, est_s=150,
        shows="the tiny LTX-2 converted to fp8/int8 and run through the GPU kernels (the CPU run uses the reference "
              "math); the full-size numbers come from the committed JSON as on the CPU"),
}


def variant_env(name: str) -> dict:
    """The environment variables of ``name``'s GPU run (:data:`COMMON_ENV` updated with the variant's own)."""
    return dict(COMMON_ENV, **VARIANTS[name]["env"])


def read_notebook(path: str | Path) -> dict:
    """A notebook file as a dict."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_notebook(nb: dict, path: str | Path) -> Path:
    """Write ``nb`` as nbformat does (one-space indent, keys sorted, non-ASCII kept, final newline)."""
    path = Path(path)
    path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _source(cell: dict) -> str:
    s = cell.get("source", "")
    return s if isinstance(s, str) else "".join(s)


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def is_executed(nb: dict) -> bool:
    """Whether the variant records a GPU run (``metadata.q8lib.executed_on`` set)."""
    return bool(nb.get("metadata", {}).get("q8lib", {}).get("executed_on"))


def cpu_output_cells(nb: dict) -> int:
    """How many code cells of a variant hold the CPU run's outputs (:func:`add_cpu_cells`)."""
    return sum(c.get("metadata", {}).get("q8lib", {}).get("output_from") == "cpu" for c in nb.get("cells", []))


def banner(name: str, executed_on: dict | None = None, cpu_cells: int = 0) -> str:
    """The generated first (markdown) cell of ``name``'s variant; after a run it names what executed it (and how
    many code cells were added after that run with the CPU run's outputs)."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in variant_env(name).items())
    if executed_on:
        ran = (f"**Executed on** {executed_on.get('gpu')} ({executed_on.get('capability')}), torch "
               f"{executed_on.get('torch')}, triton {executed_on.get('triton')}, diffusers "
               f"{executed_on.get('diffusers')}, {str(executed_on.get('date', ''))[:10]}: the outputs below are "
               "that run's (`metadata.q8lib.executed_on` has the details).")
        if cpu_cells:
            one = cpu_cells == 1
            ran += (f" Except {cpu_cells} code cell{'' if one else 's'} added to the notebook after that run, which "
                    f"only read{'s' if one else ''} committed results: {'its output is' if one else 'their outputs are'}"
                    " the CPU run's (`metadata.q8lib.output_from` is `\"cpu\"`); the next GPU run replaces "
                    f"{'it' if one else 'them'}.")
    else:
        ran = f"**Not executed yet**: the next GPU run (`{RUN}`) fills in the outputs and names the GPU here."
    return (f"# GPU variant of `{name}.ipynb`\n\n"
            f"A generated copy of [`../{name}.ipynb`](../{name}.ipynb) (`{REGENERATE}`): the same cells, run on a "
            f"GPU with\n\n`{env}`\n\n"
            "`random-*` models are the full-size architectures with random weights, built through the same loading "
            "code as the real checkpoints (which cannot be downloaded on the GPU machine). What this run shows: "
            f"{VARIANTS[name]['shows']}. The prose below was written for the CPU run with the tiny model; where it "
            "quotes CPU numbers, the outputs here differ.\n\n" + ran + "\n")


def _banner_cell(name: str, executed_on: dict | None) -> dict:
    return {"cell_type": "markdown", "id": "q8lib-gpu-banner", "metadata": {"tags": [BANNER_TAG]},
            "source": _lines(banner(name, executed_on))}


def _fresh(cell: dict) -> dict:
    """``cell`` without outputs, execution counts or run timing (tags and other metadata kept)."""
    cell = copy.deepcopy(cell)
    cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k != "execution"}
    if cell["cell_type"] == "code":
        cell.update(outputs=[], execution_count=None)
    return cell


def make_variant(cpu_nb: dict, name: str) -> dict:
    """The unexecuted GPU variant of ``name`` from its CPU notebook ``cpu_nb``."""
    meta = {k: v for k, v in cpu_nb.get("metadata", {}).items() if k != "widgets"}  # widget state is output
    meta["q8lib"] = {"gpu_run": {"source": f"../{name}.ipynb", "env": variant_env(name),
                                 "regenerate": REGENERATE, "run": RUN},
                     "executed_on": None}
    return dict(cpu_nb, metadata=meta, cells=[_banner_cell(name, None)] + [_fresh(c) for c in cpu_nb["cells"]])


def variant_problems(nb_dir: str | Path, name: str) -> list[str]:
    """How ``notebooks/gpu/<name>.ipynb`` differs from its CPU source; empty when in sync. Only what the cells
    say is compared (type, source, tags), so re-executing either notebook keeps them in sync."""
    nb_dir = Path(nb_dir)
    path = nb_dir / GPU_DIR / f"{name}.ipynb"
    if not path.exists():
        return [f"{path} is missing"]
    cpu, gpu = read_notebook(nb_dir / f"{name}.ipynb"), read_notebook(path)
    problems = []
    q8 = gpu.get("metadata", {}).get("q8lib", {})
    if q8.get("gpu_run", {}).get("env") != variant_env(name):
        problems.append(f"metadata q8lib.gpu_run.env is {q8.get('gpu_run', {}).get('env')}, not {variant_env(name)}")
    cells = gpu.get("cells", [])
    if not cells or _source(cells[0]) != banner(name, q8.get("executed_on"), cpu_output_cells(gpu)):
        problems.append("the first cell is not the generated banner")
    want = [(c["cell_type"], _source(c), c.get("metadata", {}).get("tags", [])) for c in cpu["cells"]]
    have = [(c["cell_type"], _source(c), c.get("metadata", {}).get("tags", [])) for c in cells[1:]]
    if len(want) != len(have):
        problems.append(f"{len(have)} cells after the banner, the CPU notebook has {len(want)}")
    for i, (w, h) in enumerate(zip(want, have)):
        if w != h:
            what = "type" if w[0] != h[0] else "source" if w[1] != h[1] else "tags"
            problems.append(f"cell {i + 1} of the CPU notebook ({w[0]}: {w[1][:60]!r}...) differs in its {what}")
            break
    return problems


def write_variants(nb_dir: str | Path, names=None, force: bool = False) -> dict:
    """Write ``notebooks/gpu/<name>.ipynb`` for ``names`` (default: every variant) from the CPU notebooks in
    ``nb_dir``; a variant already in sync is kept, GPU outputs included, unless ``force``. Returns
    ``{name: "written" | "kept"}``."""
    nb_dir = Path(nb_dir)
    (nb_dir / GPU_DIR).mkdir(exist_ok=True)
    done = {}
    for name in names or VARIANTS:
        if name not in VARIANTS:
            raise ValueError(f"no GPU variant named {name!r}; the variants are {sorted(VARIANTS)}")
        if not force and not variant_problems(nb_dir, name):
            done[name] = "kept"
            continue
        write_notebook(make_variant(read_notebook(nb_dir / f"{name}.ipynb"), name), nb_dir / GPU_DIR / f"{name}.ipynb")
        done[name] = "written"
    return done


def add_cpu_cells(nb_dir: str | Path, name: str) -> int:
    """Bring the executed variant of ``name`` in sync with its CPU notebook: markdown cells as the CPU notebook has
    them, code cells of the GPU run kept with their outputs, and code cells the CPU notebook gained since that run
    added with the CPU run's outputs, marked ``output_from: "cpu"`` and without an execution count; returns how
    many code cells were added. Raises ``ValueError`` when a code cell of the GPU run was edited, removed or moved
    (that needs a GPU run) or the variant was never executed (then :func:`write_variants` is all it needs)."""
    nb_dir = Path(nb_dir)
    path = nb_dir / GPU_DIR / f"{name}.ipynb"
    cpu, gpu = read_notebook(nb_dir / f"{name}.ipynb"), read_notebook(path)
    if not is_executed(gpu):
        raise ValueError(f"{path} has no GPU run to keep: regenerate it with {REGENERATE}")
    ran = [c for c in gpu["cells"][1:] if c["cell_type"] == "code"]
    out, j, added = [gpu["cells"][0]], 0, 0
    for cell in cpu["cells"]:
        if cell["cell_type"] == "code" and j < len(ran) and _source(ran[j]) == _source(cell):
            out.append(ran[j])
            j += 1
            continue
        if cell["cell_type"] == "code" and any(_source(c) == _source(cell) for c in ran[j + 1:]):
            raise ValueError(f"{path}: code cells of the GPU run were removed or moved; that needs a GPU run ({RUN})")
        new = copy.deepcopy(cell)
        if new["cell_type"] == "code":
            if not new.get("outputs"):
                raise ValueError(f"{name}.ipynb: execute the CPU notebook first (a new code cell has no outputs)")
            new["execution_count"] = None
            new.setdefault("metadata", {}).setdefault("q8lib", {})["output_from"] = "cpu"
            added += 1
        out.append(new)
    if j != len(ran):
        raise ValueError(f"{path}: {len(ran) - j} code cells of the GPU run are not in the CPU notebook as they ran "
                         f"(edited?); that needs a GPU run ({RUN})")
    gpu["cells"] = out
    gpu["cells"][0]["source"] = _lines(banner(name, gpu["metadata"]["q8lib"]["executed_on"], cpu_output_cells(gpu)))
    write_notebook(gpu, path)
    return added
