"""pytest hooks for the notebook runs (``pytest --nbval-lax notebooks/``): a fresh run folder per session.

The notebooks put their run folder at ``$SGC_RUN_DIR/<dataset>`` (``sgc.batch.default_run_dir``);
without this, every test session would reuse ``<tmp>/sgc-notebooks`` and could pick up a model,
scores or tables that an older version of the code left there. The folder is set before the
kernels start (they inherit the environment) and removed at the end of the session; a
``SGC_RUN_DIR`` set by the caller is kept, with the session's folder made inside it.
"""
import os
import shutil
import tempfile

_created = []


def pytest_configure(config):
    base = os.environ.get("SGC_RUN_DIR")
    folder = tempfile.mkdtemp(prefix="sgc-nbval-", dir=base or None)
    os.environ["SGC_RUN_DIR"] = folder
    _created.append((folder, base))


def pytest_unconfigure(config):
    while _created:
        folder, base = _created.pop()
        if base is None:
            shutil.rmtree(folder, ignore_errors=True)
            os.environ.pop("SGC_RUN_DIR", None)
        else:
            os.environ["SGC_RUN_DIR"] = base
