"""Executing the GPU variants (:mod:`q8lib.tutorial.gpu_variants`) on a GPU machine: ``notebooks/gpu/run_on_gpu.py``.

Each variant runs top to bottom in a fresh ``python3`` kernel (``nbclient``, which papermill installs) with the
environment of its ``metadata.q8lib.gpu_run.env`` and ``notebooks/`` as the working folder (the same relative paths
as the CPU notebooks). Then ``metadata.q8lib.executed_on`` gets :func:`gpu_record` (GPU name and capability,
torch/CUDA/triton/diffusers versions, date, the run's seconds), the banner cell names the GPU, outputs larger than
the size cap are replaced by a note (:func:`shrink_outputs`: the notebook must come back through the device tool,
16 MB a file, and stay reasonable in git), and the notebook is written in place and copied to ``out_dir``.
A failing cell stops that notebook: it is still written, with the error output and ``executed_on.error`` set, for
diagnosis (tests/test_notebooks_gpu_variants.py rejects committing it).
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .gpu_variants import GPU_DIR, REGENERATE, VARIANTS, banner, read_notebook, variant_problems, write_notebook

__all__ = ["gpu_record", "coalesce_streams", "shrink_outputs", "execute_variant", "run_variants"]

MAX_NOTEBOOK_MB = 8.0  # per executed variant, after shrink_outputs (the device tool returns files up to 16 MB)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpu_record() -> dict:
    """What executes the notebooks: GPU name, capability and memory (``gpu`` is ``None`` without CUDA), versions
    of Python, torch, CUDA, triton, diffusers, transformers, q8lib, and the UTC date."""
    import torch

    rec = dict(gpu=None, capability=None, date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda)
    if torch.cuda.is_available():
        i = torch.cuda.current_device()
        p = torch.cuda.get_device_properties(i)
        rec.update(gpu=torch.cuda.get_device_name(i), capability=f"sm_{p.major}{p.minor}",
                   gpu_memory_gib=round(p.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count())
    rec.update({k: _version(k) for k in ("triton", "diffusers", "transformers", "nbclient", "ipykernel")})
    rec["q8lib"] = _version("q8lib") or "source checkout"
    return rec


def _output_bytes(out: dict) -> int:
    return len(json.dumps(out, ensure_ascii=False).encode("utf-8"))


def coalesce_streams(nb: dict) -> None:
    """Merge consecutive stdout (stderr) outputs of a cell into one, as ``jupyter nbconvert --execute`` does;
    nbclient keeps every message apart, so one ``print`` loop would show as many output blocks."""
    for cell in nb["cells"]:
        merged = []
        for out in cell.get("outputs", []):
            prev = merged[-1] if merged else None
            if prev and out["output_type"] == prev["output_type"] == "stream" and out["name"] == prev["name"]:
                text = "".join(prev["text"]) + "".join(out["text"])
                prev["text"] = text.splitlines(keepends=True)
            else:
                merged.append(out)
        if "outputs" in cell:
            cell["outputs"] = merged


def shrink_outputs(nb: dict, max_mb: float = MAX_NOTEBOOK_MB) -> list[str]:
    """Replace the largest outputs of ``nb`` (inline videos first, in practice) by a one-line note until the whole
    notebook is at most ``max_mb``; returns what was replaced."""
    removed = []
    while len(json.dumps(nb, indent=1, ensure_ascii=False).encode("utf-8")) > max_mb * 1e6:
        cells = [c for c in nb["cells"] if c["cell_type"] == "code" and c.get("outputs")]
        sizes = [(_output_bytes(o), ci, oi) for ci, c in enumerate(cells) for oi, o in enumerate(c["outputs"])]
        if not sizes:
            break
        size, ci, oi = max(sizes)
        note = (f"[an output of {size / 1e6:.1f} MB (inline video or image) was removed from this copy to keep the "
                f"notebook under {max_mb:g} MB]")
        cells[ci]["outputs"][oi] = {"output_type": "display_data", "metadata": {}, "data": {"text/plain": [note]}}
        removed.append(f"cell {cells[ci].get('execution_count')}: {size / 1e6:.1f} MB")
    return removed


def _kernel_env(env: dict, cache: str) -> dict:
    """The parent environment without Q8_* settings, plus ``env`` and caches in ``cache`` (as notebooks/conftest.py
    does for the CPU runs); the kernel inherits it."""
    new = {k: v for k, v in os.environ.items() if not k.startswith("Q8_")}
    new.update(Q8LIB_CACHE=os.path.join(cache, "q8lib"), MPLCONFIGDIR=os.path.join(cache, "matplotlib"))
    new.update(env)
    return new


def execute_variant(nb_dir: str | Path, name: str, out_dir: str | Path | None = None, cell_timeout: int = 480,
                    max_mb: float = MAX_NOTEBOOK_MB, allow_cpu: bool = False) -> dict:
    """Run ``notebooks/gpu/<name>.ipynb`` in place (see the module docstring); returns its ``executed_on`` record
    (``error`` set when a cell failed). Copies the notebook and its artifacts to ``out_dir`` when given."""
    import nbclient
    import nbformat

    nb_dir = Path(nb_dir).resolve()
    path = nb_dir / GPU_DIR / f"{name}.ipynb"
    problems = variant_problems(nb_dir, name)
    if problems:
        raise RuntimeError(f"{path} is not in sync with ../{name}.ipynb ({problems[0]}): run {REGENERATE} first")
    record = gpu_record()
    if record["gpu"] is None and not allow_cpu:
        raise RuntimeError("no CUDA GPU here: the variants record the GPU that executed them (allow_cpu=True only "
                           "to try the mechanics; tests reject a notebook executed without a GPU)")
    nb = read_notebook(path)
    env = nb["metadata"]["q8lib"]["gpu_run"]["env"]
    start = time.perf_counter()
    node = nbformat.reads(json.dumps(nb), as_version=4)  # sources as strings, as nbclient expects
    with tempfile.TemporaryDirectory(prefix="q8lib-gpu-run-") as cache:
        cell_s = {}
        client = nbclient.NotebookClient(node, timeout=cell_timeout, kernel_name="python3",
                                         resources={"metadata": {"path": str(nb_dir)}},
                                         on_cell_start=_cell_clock(cell_s, name, start=True),
                                         on_cell_executed=_cell_clock(cell_s, name, start=False))
        try:
            client.execute(env=_kernel_env(env, cache))  # handed to the kernel manager: the kernel's environment
        except Exception as e:  # a cell error (CellExecutionError), a timeout or a dead kernel
            last = str(e).strip().splitlines()[-1][:500] if str(e).strip() else ""
            record["error"] = f"{type(e).__name__}: {last}"
    nb = json.loads(nbformat.writes(node))
    coalesce_streams(nb)
    record.update(wall_s=round(time.perf_counter() - start, 1), env=env,
                  cell_s={i: round(t, 1) for i, t in cell_s.items() if isinstance(i, int)})
    removed = shrink_outputs(nb, max_mb)
    if removed:
        record["outputs_removed"] = removed
    artifacts, left_out = _artifacts(nb_dir, name)
    if left_out:
        record["artifacts_left_out"] = left_out
    nb["metadata"]["q8lib"]["executed_on"] = record
    for cell in nb["cells"]:  # every cell ran here now: no outputs from a CPU run left (gpu_variants.add_cpu_cells)
        cell.get("metadata", {}).get("q8lib", {}).pop("output_from", None)
    nb["cells"][0]["source"] = banner(name, record).splitlines(keepends=True)
    write_notebook(nb, path)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out_dir / path.name)
        for src in artifacts:
            shutil.copy2(src, out_dir / src.name)
    return record


def _cell_clock(cell_s: dict, name: str, start: bool):
    """An nbclient hook that records each code cell's seconds in ``cell_s`` (index -> s) and logs them to stderr
    as they happen, so that a run stopped from outside (a device time limit) still says where its time went."""
    def hook(cell, cell_index, **_):
        if start:
            cell_s["_start"] = time.perf_counter()
            return
        seconds = time.perf_counter() - cell_s.pop("_start", time.perf_counter())
        cell_s[cell_index] = seconds
        print(f"    {name} cell {cell_index}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return hook


def _artifacts(nb_dir: Path, name: str, max_bytes: float = 15e6) -> tuple[list[Path], list[str]]:
    """The artifacts of ``name``'s run to copy out, and why any other is left out (missing, or over ``max_bytes``:
    the device tool brings back files of at most 16 MiB)."""
    keep, left_out = [], []
    for rel in VARIANTS[name].get("artifacts", []):
        src = nb_dir / rel
        if not src.is_file():
            left_out.append(f"{rel}: not written")
        elif src.stat().st_size >= max_bytes:
            left_out.append(f"{rel}: {src.stat().st_size / 1e6:.1f} MB, over {max_bytes / 1e6:g} MB")
        else:
            keep.append(src)
    return keep, left_out


def run_variants(nb_dir: str | Path, names=None, out_dir: str | Path | None = None, deadline_s: float = 540,
                 log=print, **kwargs) -> dict:
    """:func:`execute_variant` for each of ``names`` (default: all) in turn, skipping one whose estimated time
    (``VARIANTS[name]["est_s"]``) would end past ``deadline_s`` from the start; writes ``gpu_run.json`` (every
    record) to ``out_dir`` after each notebook, so a run cut short still returns what finished."""
    start = time.perf_counter()
    records = {}
    for name in names or VARIANTS:
        elapsed = time.perf_counter() - start
        if elapsed + VARIANTS[name]["est_s"] > deadline_s:
            records[name] = dict(skipped=f"{elapsed:.0f} s elapsed + ~{VARIANTS[name]['est_s']} s estimated would "
                                         f"pass the {deadline_s:g} s deadline")
        else:
            log(f"[{elapsed:5.0f} s] {name} ...", flush=True)
            records[name] = execute_variant(nb_dir, name, out_dir, **kwargs)
        rec = records[name]
        log(f"[{time.perf_counter() - start:5.0f} s] {name}: " + (
            rec.get("skipped") or rec.get("error") or f"ok in {rec['wall_s']} s on {rec['gpu']}"), flush=True)
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "gpu_run.json").write_text(json.dumps(records, indent=1) + "\n")
    return records
