import os

import pytest
import torch

# Two cores: keep tests single-threaded and deterministic.
torch.set_num_threads(1)
os.environ.setdefault("BEYONDSGD_DATA", os.path.join(os.path.dirname(__file__), ".cache"))


@pytest.fixture
def tmp_store(tmp_path):
    from beyondsgd.bench.store import Store

    st = Store(tmp_path / "store.db")
    yield st
    st.close()


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory):
    """The real `smoke` budget run once by the local executor (1 worker, 1 thread): the path of
    its store and the SuiteResult (shared by the protocol and Ray tests)."""
    from beyondsgd.bench.protocol.suite import run_suite

    path = tmp_path_factory.mktemp("smoke") / "smoke.db"
    return path, run_suite("smoke", str(path), workers=1, threads=1, progress=False)
