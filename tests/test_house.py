"""The package's shape, read from its source: no import circle (function-local imports included),
no module using another's private names, modules that fit in your head, warnings through logging,
and the training loop runnable where Ray cannot be imported."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tune_study"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = f.with_suffix("").relative_to(ROOT).parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(name: str, path: Path, modules: dict) -> tuple[set[str], list[str]]:
    """(the package modules ``name`` imports anywhere in its file, the private names it takes from them)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets, private, aliases = set(), [], {}
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            if not source.startswith("tune_study"):
                continue
            for a in node.names:
                if f"{source}.{a.name}" in modules:          # from . import memory
                    targets.add(f"{source}.{a.name}")
                    aliases[a.asname or a.name] = f"{source}.{a.name}"
                elif source in modules:                        # from .memory import OOM
                    targets.add(source)
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        private.append(f"{name}: from {source} import {a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in modules:
                    targets.add(a.name)
                    if a.asname:
                        aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            private.append(f"{name}: {aliases[node.value.id]}.{node.attr}")
    targets.discard(name)
    return targets, private


def test_no_import_circle():
    modules = _modules()
    graph = {m: _imports(m, f, modules)[0] for m, f in modules.items()}
    # A package's __init__ that imports its own submodules is not a circle with them.
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    circles, state, stack = [], {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                circles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, circles


def test_the_checker_sees_a_circle_and_a_private_name(tmp_path):
    """Negative control: the same reading finds a circle and a private import where there is one."""
    pkg = tmp_path / "tune_study"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import _g\n")
    (pkg / "b.py").write_text("from . import a\n\ndef _g():\n    return a._h\n")
    modules = {"tune_study": pkg / "__init__.py", "tune_study.a": pkg / "a.py", "tune_study.b": pkg / "b.py"}
    a, a_private = _imports("tune_study.a", pkg / "a.py", modules)
    b, b_private = _imports("tune_study.b", pkg / "b.py", modules)
    assert a == {"tune_study.b"} and b == {"tune_study.a"}
    assert a_private == ["tune_study.a: from tune_study.b import _g"] and b_private == ["tune_study.b: tune_study.a._h"]


# The folders carry the pipeline's boundaries: a module imports only from its own folder and the
# folders before it. Thin command lines (and the package's __init__) may use everything.
FOLDERS = ("base", "training", "tuning", "report")
COMMAND_LINES = {"tune_study", "tune_study.grid", "tune_study.search", "tune_study.train", "tune_study.bench",
                 "tune_study.report.__main__"}


def _folder(module: str) -> str | None:
    if module in COMMAND_LINES:
        return None
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in FOLDERS else "base"


def _against_the_flow(modules: dict) -> list[str]:
    wrong = []
    for m, f in modules.items():
        if (here := _folder(m)) is None:
            continue
        for t in _imports(m, f, modules)[0]:
            there = _folder(t)
            if there is None:
                wrong.append(f"{m} imports the command line {t}")
            # report reads the exports only: it needs neither the loop nor Ray
            elif FOLDERS.index(there) > FOLDERS.index(here) or (here == "report" and there != "report" and there != "base"):
                wrong.append(f"{m} ({here}) imports {t} ({there})")
    return wrong


def test_imports_follow_the_pipeline():
    modules = _modules()
    assert {_folder(m) for m in modules} >= set(FOLDERS)
    assert not _against_the_flow(modules), _against_the_flow(modules)


def test_the_checker_sees_an_import_against_the_flow(tmp_path):
    """Negative control: training importing tuning, and base importing a command line, are found."""
    pkg = tmp_path / "tune_study"
    for sub in ("training", "tuning"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "training" / "loop.py").write_text("def f():\n    from ..tuning.runner import g\n")
    (pkg / "tuning" / "runner.py").write_text("from ..training.loop import f\n")
    (pkg / "data.py").write_text("from .grid import main\n")
    (pkg / "grid.py").write_text("from .tuning.runner import g\n")
    modules = {"tune_study": pkg / "__init__.py", "tune_study.training": pkg / "training" / "__init__.py",
               "tune_study.tuning": pkg / "tuning" / "__init__.py",
               "tune_study.training.loop": pkg / "training" / "loop.py",
               "tune_study.tuning.runner": pkg / "tuning" / "runner.py",
               "tune_study.data": pkg / "data.py", "tune_study.grid": pkg / "grid.py"}
    assert sorted(_against_the_flow(modules)) == [
        "tune_study.data imports the command line tune_study.grid",
        "tune_study.training.loop (training) imports tune_study.tuning.runner (tuning)"]


def test_no_private_names_across_modules():
    modules = _modules()
    private = [p for m, f in modules.items() for p in _imports(m, f, modules)[1]]
    assert not private, private


def test_modules_fit_in_your_head():
    long = {m: n for m, f in _modules().items() if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_warnings_go_through_logging():
    printed = []
    for f in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                text = " ".join(c.value for a in node.args for c in ast.walk(a)
                                if isinstance(c, ast.Constant) and isinstance(c.value, str))
                if text.lstrip().startswith("WARNING"):
                    printed.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert not printed, printed


def test_training_runs_where_ray_cannot_be_imported():
    """The loop (config -> data/models -> training) is pure PyTorch: a tiny-bert epoch trains with
    ``ray`` blocked in ``sys.modules``, and none of its modules pulled Ray in."""
    code = """
import sys
sys.modules["ray"] = None          # import ray -> ImportError
import torch
from tune_study.training.loop import train
g = torch.Generator().manual_seed(0)
def split(n):
    ids = torch.randint(1000, 29000, (n, 16), generator=g).to(torch.int32)
    ids[:, 0] = 101
    return {"input_ids": ids, "attention_mask": torch.ones(n, 16, dtype=torch.int8),
            "labels": (torch.arange(n) % 2).to(torch.int64)}
history = train(dict(model="tiny-bert", batch_size=8, micro_batch_size=4, lr=1e-3, epochs=1, max_len=16,
                     scheduler="constant", seed=0, device="cpu", eval_batch_size=16),
                data={"train": split(24), "val": split(8), "test": split(8)})
assert len(history) == 1 and history[0]["optimizer_steps"] == 3, history
assert not [m for m in sys.modules if m == "ray" or m.startswith("ray.")] or sys.modules["ray"] is None
print("TRAINED WITHOUT RAY")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0 and "TRAINED WITHOUT RAY" in r.stdout, r.stderr[-3000:]
