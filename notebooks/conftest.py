"""nbval runs these notebooks with their defaults: the embedded tiny model on the CPU, offline.

The stored outputs come from exactly that run, so the parameters a person may set for their own
runs (Q8_MODEL, Q8_DEVICE, ...) are cleared for the test kernels, which inherit this environment.
"""
import os

for _key in [k for k in os.environ if k.startswith("Q8_")]:
    del os.environ[_key]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TQDM_DISABLE"] = "1"
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
