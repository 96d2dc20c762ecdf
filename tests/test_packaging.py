"""environment.yml (conda users) and pyproject.toml (pip users) ask for the same packages."""
import re
import tomllib

import yaml

from conftest import REPO

CONDA_NAMES = {"torch": "pytorch"}  # pip name -> conda-forge name where they differ


def _parse(spec: str) -> tuple[str, str]:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", spec)
    return m.group(1).lower(), m.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("dev", "notebooks"):
        wanted += project["optional-dependencies"][extra]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for p in dep["pip"]:
                if not p.startswith("-e"):
                    name, ver = _parse(p)
                    pip[name] = ver
        else:
            name, ver = _parse(dep.replace("=", "==", 1) if re.match(r"^[\w\-]+=[^=]", dep) else dep)
            conda[name] = ver
    for spec in wanted:
        name, ver = _parse(spec)
        got = pip.get(name, conda.get(CONDA_NAMES.get(name, name)))
        assert got is not None, f"{name} is in pyproject.toml but not in environment.yml"
        assert got == ver, f"{name}: pyproject.toml says {ver!r}, environment.yml says {got!r}"
    assert "python" in conda and "pip" in conda


def test_makefile_pins_a_cpu_torch():
    text = (REPO / "Makefile").read_text()
    assert re.search(r"TORCH_SPEC \?= torch==\d", text), "the Makefile must pin torch (overridable)"


def test_readme_and_makefile_name_the_same_torch_builds():
    index = re.compile(r"TORCH_SPEC=\"(torch==[\d.]+ --index-url https://download\.pytorch\.org/whl/\w+)\"")
    readme = set(index.findall((REPO / "README.md").read_text()))
    makefile = set(index.findall((REPO / "Makefile").read_text()))
    default = re.search(r"TORCH_SPEC \?= (torch==[\d.]+)", (REPO / "Makefile").read_text()).group(1)
    assert readme and readme == makefile, f"README: {sorted(readme)}; Makefile: {sorted(makefile)}"
    assert all(spec.startswith(default + " ") for spec in readme), "README/Makefile pin another torch version"
    text = (REPO / "README.md").read_text()
    assert "installs the CPU build" not in text   # only true where pip happens to find a CPU wheel


def test_citation_cff_cites_the_software_and_the_paper():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["message"] and cff["title"] and cff["authors"]
    assert str(cff["version"]) == project["version"] and cff["license"] == project["license"]
    refs = {i["value"] for r in cff["references"] for i in r.get("identifiers", [])}
    assert "arXiv:2502.17727" in refs                      # the paper sgc implements
    for ref in cff["references"]:                          # the schema wants unique, typed authors
        names = [(a.get("family-names"), a.get("given-names")) for a in ref["authors"]]
        assert len(names) == len(set(names)) and ref["type"] and ref["title"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
