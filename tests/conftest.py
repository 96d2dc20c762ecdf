import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path | None:
    """The real data folder (env SGC_TEST_DATA, default ../shared/data), or None."""
    root = Path(os.environ.get("SGC_TEST_DATA", REPO.parent / "shared" / "data"))
    return root if root.is_dir() else None


@pytest.fixture
def shared_data_dir():
    root = shared_data()
    if root is None:
        pytest.skip("real test data not found: set SGC_TEST_DATA to the shared/data folder")
    return root
