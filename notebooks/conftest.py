"""nbval runs these notebooks with their defaults: the embedded tiny model on the CPU, offline.

The stored outputs come from exactly that run, so the parameters a person may set for their own
runs (Q8_MODEL, Q8_DTYPE, ...) are cleared for the test kernels, which inherit this environment,
and the device is pinned to the CPU even where a GPU is visible.
"""
import os

for _key in [k for k in os.environ if k.startswith("Q8_")]:
    del os.environ[_key]
os.environ["Q8_DEVICE"] = "cpu"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TQDM_DISABLE"] = "1"
# Caches the notebooks may write (prompt embeddings, matplotlib's font cache) go to a temporary
# folder, never to the home folder, where an earlier run's files could change an output.
import tempfile as _tempfile

_cache = _tempfile.mkdtemp(prefix="q8lib-notebooks-")
os.environ["Q8LIB_CACHE"] = os.path.join(_cache, "q8lib")
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_cache, "matplotlib"))

# The GPU variants (notebooks/gpu/, see its README.md) run on a GPU machine only, never under nbval here;
# tests/test_notebooks_gpu_variants.py checks that they stay in sync with these notebooks.
collect_ignore_glob = ["gpu/*"]
