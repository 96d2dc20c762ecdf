"""The numbered notebooks: jupytext pairs in sync, literal parameter cells, small committed files.

Executing them is nbval's job (``make test`` runs ``pytest --nbval-lax notebooks/``).
"""
import ast
import json
from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["01_data_exploration", "02_score_model_training", "03_likelihood_classification", "04_ablations",
            "05_paper_figures", "06_beyond_classification"]


def test_the_numbered_notebooks_exist_in_pairs():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    for nb in NOTEBOOKS:
        assert nb.with_suffix(".py").exists(), f"{nb.name} has no jupytext .py pair"


def _strip_versions(text: str) -> str:
    """Drop the header lines that only record jupytext's version."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.lstrip("# ").startswith(("format_version:", "jupytext_version:")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_jupytext_pair_in_sync(path):
    nb = jupytext.read(path)
    assert nb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    expected = _strip_versions(jupytext.writes(nb, fmt="py:percent"))
    actual = _strip_versions(path.with_suffix(".py").read_text())
    assert actual == expected, (f"{path.name} and {path.with_suffix('.py').name} differ: run "
                                f"`jupytext --sync {path.with_suffix('.py')}` (or --to ipynb) and commit both")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_small_and_has_no_outputs(path):
    assert path.stat().st_size < 300 * 1024
    nb = nbformat.read(path, 4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_literals_that_papermill_reads(path):
    nb = nbformat.read(path, 4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {path.stem[:2]} ")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    names = []
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), \
            f"{path.name}: the parameters cell may only hold `name = literal` lines"
        ast.literal_eval(node.value)  # raises on anything but a literal
        names.append(node.targets[0].id)
    assert sorted(names) == sorted(papermill.inspect_notebook(str(path))), \
        f"{path.name}: papermill cannot parse every parameter line (avoid '=' inside comments)"
    shared = {"dataset", "data_root", "data_options", "run_dir"}
    if path.stem[:2] in ("01", "02", "03", "04"):
        assert shared <= set(names)
    if path.stem[:2] in ("02", "03", "04"):
        values = {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(tagged[0].source).body}
        first = nbformat.read(NOTEBOOKS[1], 4)
        ref = {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(
            [c for c in first.cells if "parameters" in c.metadata.get("tags", [])][0].source).body}
        for key in ("model", "sde", "train"):
            assert values[key] == ref[key], f"{path.name}: default {key} differs from notebook 02's (run folder reuse)"


def _tracked_runs() -> list[Path]:
    """Executed notebooks committed under reports/runs (git ls-files; a batch in progress is ignored)."""
    import subprocess
    try:
        out = subprocess.run(["git", "ls-files", "reports/runs"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted(REPO / p for p in out if p.endswith(".ipynb"))


EXECUTED = _tracked_runs()


@pytest.mark.parametrize("path", EXECUTED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_committed_executed_runs_are_complete_and_small(path):
    assert ".running" not in path.name and ".failed" not in path.name
    assert path.stat().st_size < 1024 * 1024
    nb = nbformat.read(path, 4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"{path}: an executed cell failed"
