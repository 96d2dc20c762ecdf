"""Mutation testing of the numerical core: how many single-token breakages the tests catch.

A *mutant* is a copy of one module with one small change (``+`` -> ``-``, ``<`` -> ``<=``,
``and`` -> ``or``, a number n -> n + 1, ``True`` -> ``False``, a dropped unary minus or
``not``, ...). It is *killed* when the module's fast test subset fails (or times out) and
*survives* when every test still passes. The score of a module is killed / (mutants -
equivalent), where equivalent mutants (no input can tell them from the original) are listed
with a reason in ``benchmarks/mutation_equivalent.json``.

Why a mutator of our own: mutmut 3 installs from PyPI but leaves every decorated function
unmutated, and the two central functions here (``log_likelihood``, ``elbo_class_scores``)
are decorated with ``@torch.no_grad()``; cosmic-ray rewrites the module in place in the
working tree while it runs and makes several mutants per operator site. This script mutates
a copy (the working tree is never touched), one mutant per site and operator, including
decorated functions, and skips docstrings, f-strings, annotations and error messages.

How it runs: one parent process imports torch and the other heavy dependencies once and
forks a child per mutant (on Linux); the child imports the mutated package from a temporary
copy of ``sgc/`` and ``tests/`` and runs the module's test subset with ``pytest -x``. A child
that runs longer than the timeout is killed and counts as killed. Mutants are sampled per
module with a fixed seed (``--sample``), so two runs over the same source use the same
mutants; ``--sample 0`` runs all of them.

    nice -n 10 python benchmarks/mutation.py                        # the current tests ("after")
    nice -n 10 python benchmarks/mutation.py --before 69d35bf       # and those of 69d35bf ("before"), one pass
    python benchmarks/mutation.py --modules sgc/sde.py --sample 0 --list   # print the mutants only

Writes ``reports/benchmarks/mutation.json`` (runs "before" and "after", replacing earlier ones) and ``reports/benchmarks/mutation.md`` (a table per tag and the survivors).
Not part of CI: about an hour on one (shared, loaded) CPU core with the default sample.
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "reports" / "benchmarks" / "mutation.json"
OUT_MD = REPO / "reports" / "benchmarks" / "mutation.md"
EQUIVALENT = REPO / "benchmarks" / "mutation_equivalent.json"

# module -> fast test subset: pytest arguments; test files missing from the tests being measured
# (e.g. those added after --tests-rev) are left out
SUBSETS = {
    "sgc/likelihood.py": ["tests/test_likelihood.py", "tests/test_solvers.py", "tests/test_known_answers.py",
                          "tests/test_precision.py"],
    "sgc/elbo.py": ["tests/test_elbo.py", "tests/test_elbo_elimination.py", "tests/test_known_answers.py"],
    "sgc/solvers.py": ["tests/test_solvers.py", "tests/test_precision.py"],
    "sgc/classify.py": ["tests/test_classify.py", "tests/test_evaluate_run.py",  # without two slow trainings
                        "-k", "not sklearn_estimator_end_to_end and not cli_train_classify"],
    "sgc/sde.py": ["tests/test_sde.py", "tests/test_train.py::test_sde_marginals_solve_their_moment_ode",
                   "tests/test_train.py::test_likelihood_time_sampler_is_importance_sampling",
                   "tests/test_likelihood.py", "tests/test_elbo.py", "tests/test_known_answers.py"],
    "sgc/data/dicom.py": ["tests/test_data_dicom.py", "tests/test_dicom_windows.py"],
}
DEFAULT_ORDER = ["sgc/data/dicom.py", "sgc/solvers.py", "sgc/sde.py", "sgc/classify.py", "sgc/elbo.py",
                 "sgc/likelihood.py"]   # the fast subsets first
HEAVY_IMPORTS = ("torch", "torchdiffeq", "numpy", "scipy.integrate", "scipy.stats", "sklearn.metrics",
                 "sklearn.base", "pandas", "pydicom", "pydicom.pixels", "tqdm.auto", "pytest", "yaml")


# --- finding mutants ---------------------------------------------------------------------------

@dataclass
class Mutant:
    id: str          # module:line:col:operator, stable while the module's source is unchanged
    module: str
    line: int
    operator: str    # e.g. "+ -> -"
    start: int       # byte offsets of the replaced span in the module's source
    end: int
    new: str
    context: str = ""  # the mutated source line
    lines: tuple = ()  # lines of the innermost statement holding the mutant (which tests cover it)


_BINOP = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"),
          ast.FloorDiv: ("//", "/"), ast.Mod: ("%", "/"), ast.Pow: ("**", "*"), ast.BitOr: ("|", "&"),
          ast.BitAnd: ("&", "|"), ast.MatMult: ("@", "*")}
_CMP = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
        ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="), ast.Is: ("is", "is not"), ast.IsNot: ("isnot", "is"),
        ast.In: ("in", "not in"), ast.NotIn: ("notin", "in")}
_BOOL = {ast.And: ("and", "or"), ast.Or: ("or", "and")}
_UNARY = {ast.USub: "-", ast.Not: "not", ast.Invert: "~"}
_SKIP_CALLS = {"ValueError", "RuntimeError", "TypeError", "FileNotFoundError", "KeyError", "SolverError",
               "DicomDecodeError", "FloatingPointError", "print", "warn", "_say", "log"}


def _line_offsets(src: bytes) -> list[int]:
    offsets, pos = [0], 0
    for line in src.splitlines(keepends=True):
        pos += len(line)
        offsets.append(pos)
    return offsets


class _Finder(ast.NodeVisitor):
    def __init__(self, module: str, src: bytes):
        self.module, self.src, self.lines = module, src, _line_offsets(src)
        self.found: list[Mutant] = []

    # byte offset of (lineno, col_offset) -- col_offset is in UTF-8 bytes
    def off(self, line: int, col: int) -> int:
        return self.lines[line - 1] + col

    def start(self, node) -> int:
        return self.off(node.lineno, node.col_offset)

    def end(self, node) -> int:
        return self.off(node.end_lineno, node.end_col_offset)

    def add(self, line, operator, start, end, new):
        col = start - self.lines[line - 1]
        self.found.append(Mutant(f"{self.module}:{line}:{col}:{operator}", self.module, line, operator,
                                 start, end, new))

    def gap_op(self, left_end: int, right_start: int, want: str, new: str, line: int):
        """Mutate the operator token between two operands (parentheses and spaces around it)."""
        gap = self.src[left_end:right_start]
        text = gap.decode()
        keep = [i for i, ch in enumerate(text) if ch not in " \t\r\n\\()"]
        if not keep or "#" in text:
            return
        core = text[keep[0]:keep[-1] + 1]
        if core.replace(" ", "") != want:
            return
        a = left_end + len(text[:keep[0]].encode())
        b = left_end + len(text[:keep[-1] + 1].encode())
        self.add(line, f"{core} -> {new}", a, b, new)

    # --- what is not mutated
    def visit_JoinedStr(self, node):  # f-strings: messages
        return

    def visit_FunctionDef(self, node):
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]  # the docstring
        for d in node.decorator_list:
            self.visit(d)
        for default in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
            self.visit(default)
        for stmt in body:
            self.visit(stmt)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        for stmt in body:
            self.visit(stmt)

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)

    def visit_Raise(self, node):  # the exception raised is tested by name; its message is not mutated
        return

    def visit_Assert(self, node):
        self.visit(node.test)

    def visit_Call(self, node):
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if name in _SKIP_CALLS:
            return
        self.generic_visit(node)

    def visit_Assign(self, node):
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return
        self.generic_visit(node)

    def visit_Expr(self, node):
        if isinstance(node.value, ast.Constant):  # a bare string (module docstring, comment string)
            return
        self.generic_visit(node)

    # --- mutations
    def visit_BinOp(self, node):
        ops = _BINOP.get(type(node.op))
        if ops:
            self.gap_op(self.end(node.left), self.start(node.right), ops[0], ops[1], node.lineno)
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        ops = _BINOP.get(type(node.op))
        if ops:
            self.gap_op(self.end(node.target), self.start(node.value), ops[0] + "=", ops[1] + "=", node.lineno)
        self.generic_visit(node)

    def visit_Compare(self, node):
        prev = node.left
        for op, right in zip(node.ops, node.comparators):
            want, new = _CMP[type(op)]
            self.gap_op(self.end(prev), self.start(right), want, new, right.lineno)
            if isinstance(right, ast.Constant) and isinstance(right.value, str) and right.value:
                self.add(right.lineno, f"{right.value!r} -> 'XX'", self.start(right), self.end(right), "'XX'")
            prev = right
        if isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
            pass
        self.visit(node.left)
        for right in node.comparators:
            if not (isinstance(right, ast.Constant) and isinstance(right.value, str)):
                self.visit(right)

    def visit_BoolOp(self, node):
        want, new = _BOOL[type(node.op)]
        for a, b in zip(node.values, node.values[1:]):
            self.gap_op(self.end(a), self.start(b), want, new, b.lineno)
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        symbol = _UNARY.get(type(node.op))
        if symbol:
            s = self.start(node)
            text = self.src[s:self.start(node.operand)].decode()
            if text.startswith(symbol):
                n = len(symbol) + (len(text) - len(text[len(symbol):].lstrip(" ")) - len(symbol)
                                   if symbol == "not" else 0)
                self.add(node.lineno, f"drop {symbol}", s, s + n, "")
        self.generic_visit(node)

    def visit_Constant(self, node):
        v = node.value
        if isinstance(v, bool):
            self.add(node.lineno, f"{v} -> {not v}", self.start(node), self.end(node), str(not v))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            new = repr(v + 1)
            self.add(node.lineno, f"{self.src[self.start(node):self.end(node)].decode()} -> {new}",
                     self.start(node), self.end(node), new)


def _statement_spans(tree) -> dict[int, tuple[int, int]]:
    """line -> (first, last) line of the innermost statement that contains it."""
    spans = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt):
            for line in range(node.lineno, node.end_lineno + 1):
                old = spans.get(line)
                if old is None or old[1] - old[0] > node.end_lineno - node.lineno:
                    spans[line] = (node.lineno, node.end_lineno)
    return spans


def find_mutants(path: Path, module: str) -> list[Mutant]:
    """Every mutant of one module (source at ``path``), in source order, each compiling."""
    src = path.read_bytes()
    finder = _Finder(module, src)
    tree = ast.parse(src)
    finder.visit(tree)
    spans = _statement_spans(tree)
    out, seen = [], set()
    lines = src.splitlines()
    for m in sorted(finder.found, key=lambda m: (m.start, m.operator)):
        if m.id in seen or b"pragma: no mutate" in lines[m.line - 1]:
            continue
        new_src = src[:m.start] + m.new.encode() + src[m.end:]
        try:
            ast.parse(new_src)
        except SyntaxError:
            continue
        seen.add(m.id)
        m.context = new_src.splitlines()[m.line - 1].decode().strip()[:160]
        first, last = spans.get(m.line, (m.line, m.line))
        m.lines = tuple(range(first, last + 1))
        out.append(m)
    return out


def sample(mutants: list[Mutant], n: int, seed: int) -> list[Mutant]:
    if n <= 0 or n >= len(mutants):
        return list(mutants)
    rng = random.Random(f"{seed}:{mutants[0].module}")
    return sorted(rng.sample(mutants, n), key=lambda m: m.start)


# --- running them --------------------------------------------------------------------------

def _prepare(work: Path, tests_rev: str | None) -> None:
    """A copy of sgc/ (working tree) and tests/ (working tree or a git revision) in ``work``."""
    shutil.copytree(REPO / "sgc", work / "sgc", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", work / "pyproject.toml")
    if tests_rev:
        data = subprocess.run(["git", "archive", tests_rev, "tests"], cwd=REPO, capture_output=True,
                              check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(work, filter="data")
    else:
        shutil.copytree(REPO / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))


def _line_tracer(filename: str):
    """pytest plugin (for the baseline child): which lines of ``filename`` each test executes, and
    each test's seconds. Lines run outside a test (imports, collection) go to "<import>"."""
    import pytest

    class LineTracer:
        def __init__(self):
            self.current, self.lines, self.seconds = "<import>", {}, {}

        def _local(self, frame, event, arg):
            if event == "line":
                self.lines.setdefault(self.current, set()).add(frame.f_lineno)
            return self._local

        def trace(self, frame, event, arg):
            if frame.f_code.co_filename == filename:
                self.lines.setdefault(self.current, set()).add(frame.f_lineno)
                return self._local
            return None

        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_protocol(self, item, nextitem):
            self.current, start = item.nodeid, time.perf_counter()
            yield
            self.seconds[item.nodeid] = time.perf_counter() - start
            self.current = "<between tests>"

    return LineTracer()


def _run_child(work: Path, tests: list[str], log: Path, timeout: float, trace_file: Path | None = None,
               trace_out: Path | None = None, collect_out: Path | None = None) -> tuple[str, float]:
    """Fork; the child runs pytest on ``tests`` inside ``work``. ('passed'|'failed'|'timeout', seconds).

    With ``trace_file``, the child records which lines of that file each test executes (JSON to
    ``trace_out``) and runs every test (no -x)."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(work)
            sys.path.insert(0, str(work))
            sys.dont_write_bytecode = True
            os.setpgid(0, 0)
            import threading

            import pytest
            import torch
            torch.set_num_threads(1)
            args = ["-q", "-p", "no:cacheprovider", "-p", "no:nbval", "-W", "ignore", "--rootdir", str(work)]
            if collect_out is not None:
                class Collect:
                    def pytest_collection_finish(self, session):
                        Path(collect_out).write_text(json.dumps([i.nodeid for i in session.items]))
                rc = pytest.main(["--collect-only", *args, *tests], plugins=[Collect()])
            elif trace_file is None:
                rc = pytest.main(["-x", *args, *tests])
            else:
                tracer = _line_tracer(str(trace_file))
                sys.settrace(tracer.trace)
                threading.settrace(tracer.trace)
                rc = pytest.main([*args, *tests], plugins=[tracer])
                sys.settrace(None)
                Path(trace_out).write_text(json.dumps({
                    "lines": {k: sorted(v) for k, v in tracer.lines.items()}, "seconds": tracer.seconds}))
        except BaseException:  # noqa: BLE001 -- any failure of the child counts as a test failure
            import traceback
            traceback.print_exc()
            rc = 99
        os._exit(int(rc))
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            return ("passed" if rc == 0 else "failed"), time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.kill(pid, signal.SIGKILL) if _alive(pid) else None
            os.waitpid(pid, 0)
            return "timeout", time.perf_counter() - start
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _covering(m: Mutant, cover: dict, seconds: dict) -> list[str] | None:
    """Test node ids that execute the mutant's statement, fastest first; None: only import-time code."""
    want = set(m.lines)
    tests = [t for t, lines in cover.items() if not t.startswith("<") and want & set(lines)]
    if tests:
        return sorted(tests, key=lambda t: seconds.get(t, 0.0))
    if any(want & set(lines) for t, lines in cover.items() if t.startswith("<")):
        return None  # a module-level constant or a def line: run the whole subset
    return []


def _summary(module, tests, base_s, results, equivalent):
    killed = sum(r["verdict"] in ("killed", "timeout") for r in results)
    equiv = sum(r["verdict"] == "equivalent" for r in results)
    scored = len(results) - equiv
    return {"module": module, "tests": tests, "baseline_seconds": round(base_s, 1), "mutants_sampled": len(results),
            "killed": killed, "timeouts": sum(r["verdict"] == "timeout" for r in results),
            "equivalent": equiv, "survived": scored - killed,
            "not_covered": sum(r["verdict"] == "not covered" for r in results),
            "score": round(killed / scored, 4) if scored else None,
            "survivors": [{k: r[k] for k in ("id", "line", "operator", "context", "verdict")}
                          for r in results if r["verdict"] in ("survived", "not covered")],
            "equivalent_mutants": [{"id": r["id"], "reason": equivalent[r["id"]]} for r in results
                                   if r["verdict"] == "equivalent"],
            "results": [{k: r[k] for k in ("id", "verdict", "seconds", "tests_run")} for r in results]}


def _verdict(outcome: str, ran: int, mutant_id: str, equivalent: dict) -> str:
    if outcome == "timeout":
        return "timeout"
    if outcome != "passed":
        return "killed"
    return "equivalent" if mutant_id in equivalent else ("survived" if ran else "not covered")


def run_module(module: str, mutants: list[Mutant], work: Path, equivalent: dict, log_dir: Path,
               progress=print, old_work: Path | None = None) -> dict[str, dict]:
    """Run the module's mutants against the tests in ``work`` ("after") and, given ``old_work``
    (a copy with older tests), against those too ("before"), in one pass.

    Each mutant runs only the tests that execute its statement, recorded by tracing the unmutated
    module once under the current tests (the old tests are taken to cover what the same-named
    current tests cover); a mutant on a line no test executes survives without a run ("not
    covered"). A mutant the old tests kill is killed by the current ones too when the old test
    files are unchanged or only gained assertions, so after a kill "before", only the tests that
    are new or in changed files run "after"."""
    tests = [t for t in SUBSETS[module] if not t.startswith("tests/") or (work / t.split("::")[0]).exists()]
    target = work / module
    original = target.read_bytes()
    trace_out = log_dir / "coverage.json"
    for attempt in (1, 2):  # once more on a failure: a shared machine can kill a child (memory)
        status, base_s = _run_child(work, tests, log_dir / "baseline.log", timeout=7200, trace_file=target,
                                    trace_out=trace_out)
        if status == "passed":
            break
        progress(f"  baseline attempt {attempt} failed:\n" + (log_dir / "baseline.log").read_text()[-3000:])
    if status != "passed":
        raise RuntimeError(f"{module}: the test subset {tests} fails without any mutation:\n"
                           + (log_dir / "baseline.log").read_text()[-3000:])
    traced = json.loads(trace_out.read_text())
    cover, seconds = traced["lines"], traced["seconds"]
    old_tests, old_ids, same_files = [], set(), set()
    if old_work is not None:
        old_tests = [t for t in SUBSETS[module] if not t.startswith("tests/") or (old_work / t.split("::")[0]).exists()]
        _run_child(old_work, old_tests, log_dir / "collect_old.log", timeout=600,
                   collect_out=log_dir / "old_ids.json")
        old_ids = set(json.loads((log_dir / "old_ids.json").read_text()))
        same_files = {f.relative_to(work).as_posix() for f in (work / "tests").glob("*.py")
                      if (old_work / f.relative_to(work)).exists()
                      and (old_work / f.relative_to(work)).read_bytes() == f.read_bytes()}
    runs = {"after": [], "before": []}
    old_target = None if old_work is None else old_work / module

    def budget_of(chosen):
        return sum(seconds.values()) if chosen is None else sum(seconds.get(t, 0) for t in chosen)

    def run(folder, tgt, chosen, all_tests, m, log):
        if chosen == []:
            return "passed", 0.0, 0
        tgt.write_bytes(original[:m.start] + m.new.encode() + original[m.end:])
        try:
            outcome, secs = _run_child(folder, all_tests if chosen is None else chosen, log,
                                       timeout=10 * budget_of(chosen) + 120)
        finally:
            tgt.write_bytes(original)
        return outcome, secs, len(all_tests) if chosen is None else len(chosen)

    try:
        for i, m in enumerate(mutants):
            chosen = _covering(m, cover, seconds)
            line = f"  [{i + 1}/{len(mutants)}]"
            if old_work is not None:
                old_chosen = None if chosen is None else [t for t in chosen if t in old_ids]
                outcome, secs, ran = run(old_work, old_target, old_chosen, old_tests, m, log_dir / "mutant_old.log")
                v_old = _verdict(outcome, ran, m.id, equivalent)
                runs["before"].append({**asdict(m), "verdict": v_old, "seconds": round(secs, 2), "tests_run": ran})
                line += f" before: {v_old:11s} {secs:6.1f}s {ran:3d} tests |"
                if v_old in ("killed", "timeout") and chosen is not None:
                    # the same old tests are in the current suite: only new tests / changed files can add
                    chosen = [t for t in chosen if not (t in old_ids and t.split("::")[0] in same_files)]
                    outcome2, secs2, ran2 = run(work, target, chosen, tests, m, log_dir / "mutant.log") \
                        if chosen else ("failed", 0.0, 0)
                    if outcome2 == "passed":
                        outcome2 = "failed"   # killed before by an unchanged test that is still there
                    outcome, secs, ran = outcome2, secs2, ran2
                    v_new = "timeout" if v_old == "timeout" and outcome2 == "failed" else _verdict(outcome, ran, m.id, equivalent)
                else:
                    outcome, secs, ran = run(work, target, chosen, tests, m, log_dir / "mutant.log")
                    v_new = _verdict(outcome, ran, m.id, equivalent)
            else:
                outcome, secs, ran = run(work, target, chosen, tests, m, log_dir / "mutant.log")
                v_new = _verdict(outcome, ran, m.id, equivalent)
            runs["after"].append({**asdict(m), "verdict": v_new, "seconds": round(secs, 2), "tests_run": ran})
            progress(f"{line} after: {v_new:11s} {secs:6.1f}s {ran:3d} tests  {m.id}  | {m.context}")
    finally:
        target.write_bytes(original)
    out = {"after": _summary(module, tests, base_s, runs["after"], equivalent)}
    if old_work is not None:
        out["before"] = _summary(module, old_tests, base_s, runs["before"], equivalent)
    return out


# --- reports -------------------------------------------------------------------------------

def write_markdown(data: dict, path: Path) -> None:
    lines = ["# Mutation scores of the numerical core", "",
             "Generated by `benchmarks/mutation.py` from `mutation.json` (do not edit by hand). Score = "
             "killed / (sampled - equivalent); a mutant that makes its tests time out counts as killed.", ""]
    for tag, run in data.get("runs", {}).items():
        carried = ""
        lines += [f"## {tag}: tests {run['tests']}", "",
                  f"{run['date']}, {run['machine']}; sample {run['sample']} mutants per module (seed {run['seed']}); "
                  f"last command: `{run['command']}`{carried}", "",
                  "| module | mutants (all) | sampled | killed | survived | equivalent | score |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in run["modules"]:
            score = "" if r["score"] is None else f"{100 * r['score']:.0f} %"
            lines.append(f"| `{r['module']}` | {r['mutants_total']} | {r['mutants_sampled']} | {r['killed']} | "
                         f"{r['survived']} | {r['equivalent']} | {score} |")
        by_command = {}
        for r in run["modules"]:
            by_command.setdefault(r.get("command", run["command"]), []).append(r["module"].split("/")[-1])
        if len(by_command) > 1:
            lines += ["", "Measured by " + "; ".join(f"`{c}` ({', '.join(m)})" for c, m in by_command.items()) + "."]
        surv = [(r["module"], s) for r in run["modules"] for s in r["survivors"]]
        if surv:
            lines += ["", "Surviving mutants:", ""]
            lines += [f"- `{s['id']}`: `{s['context']}`" for _, s in surv]
        eq = [e for r in run["modules"] for e in r["equivalent_mutants"]]
        if eq:
            lines += ["", "Equivalent mutants (not scored):", ""]
            lines += [f"- `{e['id']}`: {e['reason']}" for e in eq]
        lines.append("")
    path.write_text("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", nargs="+", default=DEFAULT_ORDER,
                    help="modules to mutate (repo-relative), in this order; the JSON keeps the other modules' "
                         "entries from earlier runs")
    ap.add_argument("--sample", type=int, default=8, help="mutants per module (0 = all)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the per-module sample")
    ap.add_argument("--before", default=None, metavar="REV",
                    help="also score the tests of this git revision (e.g. 69d35bf) in the same pass, as run "
                         "'before' (the current tests are run 'after')")
    ap.add_argument("--list", action="store_true", help="only print the mutants")
    ap.add_argument("--rescore", action="store_true",
                    help="run nothing: re-apply benchmarks/mutation_equivalent.json to the stored results")
    ap.add_argument("--out", default=str(OUT_JSON))
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy and the logs")
    args = ap.parse_args(argv)
    equivalent = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    equivalent = {k: v for k, v in equivalent.items() if not k.startswith("_")}

    if args.rescore:
        out = Path(args.out)
        data = json.loads(out.read_text())
        for run in data["runs"].values():
            for i, mod in enumerate(run["modules"]):
                by_id = {r["id"]: r for r in mod["results"]}
                every = {m.id: m for m in find_mutants(REPO / mod["module"], mod["module"])}
                results = []
                for rid, r in by_id.items():
                    verdict = r["verdict"]
                    if verdict in ("survived", "not covered", "equivalent"):
                        verdict = "equivalent" if rid in equivalent else (
                            "survived" if r["tests_run"] else "not covered")
                    m = every.get(rid)
                    results.append({**(asdict(m) if m else {"id": rid, "line": 0, "operator": "", "context": ""}),
                                    **r, "verdict": verdict})
                new = _summary(mod["module"], mod["tests"], mod["baseline_seconds"], results, equivalent)
                run["modules"][i] = {**mod, **new}
        out.write_text(json.dumps(data, indent=1))
        write_markdown(data, out.with_suffix(".md"))
        print(f"rescored {out}")
        return data

    plan = {}
    for module in args.modules:
        if module not in SUBSETS:
            raise SystemExit(f"no test subset for {module}; known: {sorted(SUBSETS)}")
        every = find_mutants(REPO / module, module)
        plan[module] = (len(every), sample(every, args.sample, args.seed))
    if args.list:
        for module, (total, chosen) in plan.items():
            print(f"{module}: {total} mutants, {len(chosen)} sampled")
            for m in chosen:
                print(f"  {m.id:50s} {m.context}")
        return None

    os.environ.setdefault("SGC_TEST_DATA", str(REPO.parent / "shared" / "data"))
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in HEAVY_IMPORTS:  # imported once here, inherited by every forked child
        __import__(name)
    work = Path(tempfile.mkdtemp(prefix="sgc-mutation-"))
    started = time.perf_counter()
    modules = {"after": [], "before": []}
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    out = Path(args.out)
    command = "python benchmarks/mutation.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def save(modules, final=False):
        """Write the JSON and Markdown (after every module, so a stopped run keeps what it finished)."""
        data = json.loads(out.read_text()) if out.exists() else {"benchmark": "mutation", "runs": {}}
        for tag, tests in (("before", args.before), ("after", "working tree")):
            if not modules[tag]:
                continue
            for r in modules[tag]:   # each module's entry says which invocation measured it
                r.setdefault("command", command)
                r.setdefault("date", datetime.now(timezone.utc).isoformat(timespec="seconds"))
            mine = {r["module"] for r in modules[tag]}
            kept = [r for r in data["runs"].get(tag, {}).get("modules", []) if r["module"] not in mine]
            data["runs"][tag] = {
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), 1 thread per test run",
                "source_revision": rev.strip(), "tests": tests if tag == "before" else f"{tests} at {rev.strip()}",
                "sample": args.sample, "seed": args.seed, "seconds": round(time.perf_counter() - started),
                "complete": final, "command": command,
                "modules": sorted(kept + modules[tag], key=lambda r: DEFAULT_ORDER.index(r["module"])
                                  if r["module"] in DEFAULT_ORDER else 99)}
            if final:
                print(f"\n{tag}: tests {data['runs'][tag]['tests']}")
                print(f"{'module':22s} {'sampled':>8s} {'killed':>7s} {'survived':>9s} {'equiv':>6s} {'score':>7s}")
                for r in modules[tag]:
                    score = "-" if r["score"] is None else f"{100 * r['score']:.0f}%"
                    print(f"{r['module']:22s} {r['mutants_sampled']:8d} {r['killed']:7d} {r['survived']:9d} "
                          f"{r['equivalent']:6d} {score:>7s}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1))
        write_markdown(data, out.with_suffix(".md"))
    try:
        _prepare(work / "now", None)
        old_work = None
        if args.before:
            old_work = work / "old"
            _prepare(old_work, args.before)
        for module, (total, chosen) in plan.items():
            print(f"{module}: {total} mutants, running {len(chosen)} with {SUBSETS[module]}", flush=True)
            log_dir = work / "logs" / module.replace("/", "_")
            log_dir.mkdir(parents=True)
            res = run_module(module, chosen, work / "now", equivalent, log_dir,
                             progress=lambda s: print(s, flush=True), old_work=old_work)
            for tag, r in res.items():
                r["mutants_total"] = total
                modules[tag].append(r)
                print(f"{module} {tag}: score {r['score']} ({r['killed']} killed, {r['survived']} survived, "
                      f"{r['equivalent']} equivalent)", flush=True)
            save(modules)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    save(modules, final=True)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return modules


if __name__ == "__main__":
    main()
