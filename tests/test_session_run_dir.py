"""Each test session (and the notebooks nbval runs in it) gets a fresh run folder."""
import os
from pathlib import Path

from sgc.batch import default_run_dir


def test_notebooks_run_in_a_fresh_folder_of_this_session():
    folder = Path(os.environ["SGC_RUN_DIR"])
    assert folder.name.startswith("sgc-test-session-") and folder.is_dir()
    assert default_run_dir("digits") == folder / "digits"
