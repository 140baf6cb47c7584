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
