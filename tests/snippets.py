"""README code that tests run: the fenced block right after an HTML comment ``<!-- snippet: NAME -->``.

    from snippets import run_snippet
    namespace = run_snippet("save-load", tmp_path)   # executes it with tmp_path as the working directory
"""
from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet(name: str, path: str | os.PathLike = README) -> str:
    """The code of the snippet called ``name`` in ``path`` (LookupError unless exactly one is found)."""
    path = Path(path)
    found = re.findall(rf"<!-- snippet: {re.escape(name)} -->[ \t]*\n```[\w-]*\n(.*?)\n```", path.read_text(), re.S)
    if len(found) != 1:
        raise LookupError(f"{path.name}: expected one code block after <!-- snippet: {name} -->, found {len(found)}")
    return found[0]


def run_snippet(name: str, cwd: str | os.PathLike, path: str | os.PathLike = README) -> dict:
    """Execute the snippet in a fresh namespace with ``cwd`` as the working directory; returns that namespace
    (tracebacks name ``README.md:snippet:NAME`` and the line within the snippet)."""
    code = compile(snippet(name, path), f"{Path(path).name}:snippet:{name}", "exec")
    namespace = {"__name__": f"snippet_{name.replace('-', '_')}"}
    old = os.getcwd()
    os.chdir(cwd)
    try:
        exec(code, namespace)
    finally:
        os.chdir(old)
    return namespace


def readme_snippet(name: str) -> str:
    """The source of README.md's snippet ``name`` (same as :func:`snippet` on README.md)."""
    return snippet(name)
