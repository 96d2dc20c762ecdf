import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path | None:
    """The real data folder: $SGC_TEST_DATA, else $SGC_DATA (the same layout, one folder per source),
    else the team's ../shared/data; None when none exists."""
    given = os.environ.get("SGC_TEST_DATA") or os.environ.get("SGC_DATA")
    root = Path(given) if given else REPO.parent / "shared" / "data"
    return root if root.is_dir() else None


@pytest.fixture
def shared_data_dir():
    root = shared_data()
    if root is None:
        pytest.skip("real test data not found: set SGC_TEST_DATA (or SGC_DATA) to the folder holding medmnist/, mini-mias/, cbis-ddsm/")
    return root
