"""The one reader of the results JSON in ``benchmarks/results/`` (written by ``python -m q8lib.bench``,
the benchmark scripts and ``q8lib generate/compare/memory``): files, provenance, variant tables.

Used by notebook 06 (through :mod:`q8lib.tutorial.viz`) and ``benchmarks/readme_results.py``.
"""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path

__all__ = ["load_result", "load_results", "provenance", "result_tables", "is_pipeline_run"]


def load_result(path: str | os.PathLike) -> dict | None:
    """One results file as a dict, or ``None`` when it does not exist."""
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else None


def load_results(results_dir: str | os.PathLike = "benchmarks/results", pattern: str = "*.json") -> list[dict]:
    """Every JSON file in ``results_dir`` matching ``pattern`` as a dict, with ``_file`` added; sorted by name.

    Files that are not valid JSON objects are skipped with their error recorded under ``_error``.
    """
    out = []
    for f in sorted(glob.glob(os.path.join(str(results_dir), pattern))):
        try:
            data = json.loads(Path(f).read_text())
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
        except (ValueError, OSError) as e:
            data = {"_error": f"{type(e).__name__}: {e}"}
        data["_file"] = os.path.basename(f)
        out.append(data)
    return out


_TIME_KEYS = ("fwd_ms", "ms", "time_ms", "step_ms", "time_s", "total_s", "end_to_end_s")
_ERR_KEYS = ("rel_err_vs_bf16", "rel_err")
_COS_KEYS = ("cos_vs_bf16", "cos")


def provenance(result: dict) -> dict:
    """``{device, date, versions}`` of a results file, from the top level or its ``meta`` block."""
    meta = result.get("meta") if isinstance(result.get("meta"), dict) else {}
    versions = result.get("versions") or {k: meta[k] for k in ("torch", "triton", "diffusers", "transformers", "cuda")
                                          if meta.get(k)}
    return dict(device=result.get("device") or meta.get("device"), date=result.get("date") or meta.get("date"),
                versions=versions or None)


def _first(r: dict, keys):
    return next(((k, r[k]) for k in keys if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)),
                (None, None))


def _rows(results: dict) -> list[dict]:
    rows = []
    for variant, r in results.items():
        if not isinstance(r, dict):
            continue
        tkey, t = _first(r, _TIME_KEYS)
        rows.append(dict(
            variant=variant,
            time=t,
            time_unit=None if tkey is None else ("s" if tkey.endswith("_s") else "ms"),
            peak_mb=_first(r, ("peak_mb",))[1],
            tflops=_first(r, ("tflops",))[1],
            rel_err=_first(r, _ERR_KEYS)[1],
            cos=_first(r, _COS_KEYS)[1],
            error="error" in r,
        ))
    return rows


def result_tables(result: dict) -> dict[str, list[dict]]:
    """The tables of one results file: ``{table name: rows}``, each row
    ``{variant, time, time_unit, peak_mb, tflops, rel_err, cos, error}`` (``None`` where absent).

    Understands the two layouts of ``benchmarks/results``: a top-level ``results`` ``{variant: {...}}``
    (one table named ``""``) and ``shapes`` ``{shape: {"results": {variant: {...}}}}`` (one table per shape).
    """
    tables = {}
    if is_pipeline_run(result):
        return tables
    if isinstance(result.get("results"), dict):
        tables[""] = _rows(result["results"])
    for name, shape in (result.get("shapes") or {}).items():
        if isinstance(shape, dict) and isinstance(shape.get("results"), dict):
            tables[name] = _rows(shape["results"])
    return tables


def is_pipeline_run(result: dict) -> bool:
    """Whether a results file records whole pipeline runs (``kind`` = ``"q8lib generate"``, ``"q8lib compare"``
    or ``"q8lib memory"``, written by the CLI) rather than a table of variants."""
    return str(result.get("kind", "")).startswith("q8lib ")
