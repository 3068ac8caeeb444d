import pyro
import pytest
import torch

# The tests' tensors are small: one thread avoids torch's per-op synchronisation, which
# costs more than it gains here, and is far faster when the machine is shared.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_pyro():
    """Each test starts with an empty Pyro param store and a fixed seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
