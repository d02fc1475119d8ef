"""Test-session set-up: CPU interpreter for Triton, offline hub, caches in a temporary folder, seeds.

Seeds: every test starts from torch/random/numpy seeded with ``Q8LIB_TEST_SEED`` (default 0), so
a run is reproducible; the ``seed`` fixture hands the same number to tests that build their own
generators. ``Q8LIB_TEST_SEED=random`` draws a fresh seed per test for fuzzing. The seed of a
failing test is printed in its report ("seed" section), to re-run it with ``Q8LIB_TEST_SEED=<n>``.
"""
import os
import random
import tempfile

import pytest
import torch

# Triton kernels run on the CPU through Triton's interpreter; it must be chosen before triton loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# Caches that tests (and the CLI they run) may read or write live in a folder of this session only:
# a prompt-embedding cache left in the home folder by an earlier q8lib must not change a result.
_CACHE = tempfile.mkdtemp(prefix="q8lib-tests-")
os.environ["Q8LIB_CACHE"] = os.path.join(_CACHE, "q8lib")
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_CACHE, "matplotlib"))

SEED_ENV = "Q8LIB_TEST_SEED"


def _seed_for_test() -> int:
    value = os.environ.get(SEED_ENV, "0")
    if value == "random":
        return int.from_bytes(os.urandom(4), "little") % 2**31
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"{SEED_ENV} must be an integer or 'random', got {value!r}") from None


def pytest_report_header(config):
    """The resolved versions, in every CI log (and all installed distributions in a file)."""
    from importlib import metadata

    names = ("torch", "triton", "diffusers", "transformers", "tokenizers", "safetensors", "huggingface-hub",
             "numpy", "nbval", "accelerate", "q8lib")
    found = {}
    for n in names:
        try:
            found[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            found[n] = "not installed"
    log_dir = os.environ.get("Q8LIB_CI_LOG_DIR")
    if log_dir:
        dists = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()}, key=str.lower)
        with open(os.path.join(log_dir, "pip-freeze.txt"), "w") as f:
            f.write("\n".join(dists) + "\n")
    seed = os.environ.get(SEED_ENV, "0")
    return [f"q8lib tests: seed {seed} ({SEED_ENV}), caches under {_CACHE}",
            "versions: " + ", ".join(f"{k} {v}" for k, v in found.items())]


@pytest.fixture(autouse=True)
def _seeded(request):
    """Seed torch, random and numpy before every test; report the seed if the test fails."""
    s = _seed_for_test()
    torch.manual_seed(s)
    random.seed(s)
    try:
        import numpy as np

        np.random.seed(s)
    except ImportError:  # pragma: no cover
        pass
    request.node._q8lib_seed = s
    yield s


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    s = getattr(item, "_q8lib_seed", None)
    if report.failed and s is not None:
        report.sections.append(("seed", f"{SEED_ENV}={s} reproduces this test's inputs"))
    return report


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def sm() -> int:
    """Compute capability as an int (90 for Hopper, 89 for Ada), 0 without CUDA."""
    if not torch.cuda.is_available():
        return 0
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


@pytest.fixture
def seed(_seeded):
    """The test's seed (see the module docstring), for tests that build their own generators."""
    return _seeded
