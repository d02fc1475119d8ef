import pytest
import torch

import q8lib
from q8lib import BackendUnavailableError, get_backend, list_backends, resolve_backend


def test_reference_always_available():
    assert list_backends()["reference"] is None
    assert resolve_backend("auto", "cpu").name == "reference"


def test_unknown_backend_names_known_ones():
    with pytest.raises(BackendUnavailableError, match="reference"):
        get_backend("cutlass9000")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_triton_unavailable_on_cpu_says_why():
    assert "CUDA" in list_backends()["triton"]
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
        get_backend("triton")


def test_explicit_unavailable_backend_fails_in_module(seed):
    if list_backends()["triton"] is None:
        pytest.skip("triton is available here")
    lin = q8lib.Q8Linear.from_linear(torch.nn.Linear(16, 8), backend="triton")
    with pytest.raises(BackendUnavailableError):
        lin(torch.randn(2, 16))
