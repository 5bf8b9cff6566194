"""Layering contracts (import-linter, configured in pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    env = dict(os.environ, PYTHONPATH=str(REPO / "app"))
    result = subprocess.run([str(exe), "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " kept, 0 broken." in result.stdout, result.stdout


def test_dicom_package_loads_without_torch_or_qt() -> None:
    code = ("import sys, mammotriage.dicom, mammotriage.dicom.hanging, mammotriage.dicom.voi; "
            "bad = [m for m in ('torch', 'PySide6', 'monai') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=str(REPO / "app"))
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


#: The layers of pyproject's contract, top first; packages on one line are independent
#: siblings (neither imports the other). cli (the composition root) and __main__ stand
#: outside, on purpose.
LAYERS = [
    {"ui"},
    {"viewer"},
    {"net", "triage", "export", "learning"},
    {"model"},
    {"store"},
    {"phantom"},  # synthetic exams: written as DICOM with the dicom package's vocabulary
    {"dicom"},
    {"config", "jsonio", "progress", "lifetime", "resources", "clock", "digest"},
]
COMPOSITION_ROOT = {"cli", "__main__"}
#: Deprecated aliases of moved modules (removed next release): the only upward imports.
DEPRECATED_ALIASES = {
    "mammotriage.model.gate", "mammotriage.model.retrain", "mammotriage.model.snapshot_data",
    "mammotriage.model.pipeline", "mammotriage.model.dataset_check",
    "mammotriage.model.learning_commands", "mammotriage.triage.monitor",
}
#: ... and the one deprecated import inside a module that stays (the old registry's
#: promote/rollback methods, reached through the learning registry for one release).
DEPRECATED_IMPORTS = {("mammotriage.model.registry", "mammotriage.learning.registry")}


def _graph(*, runtime_only: bool = False):
    """grimp's import graph; ``runtime_only`` leaves out imports under TYPE_CHECKING."""
    import grimp

    return grimp.build_graph("mammotriage", cache_dir=None, exclude_type_checking_imports=runtime_only)


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_import_graph_has_no_upward_import_and_no_circle_between_packages() -> None:
    """grimp's graph (imports inside functions included): every import between two
    packages goes down the layers, none goes sideways between siblings, and so the
    packages form no circle."""
    graph = _graph()
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    # function-level imports are in the graph (cli imports the UI only inside cmd_app)
    assert "mammotriage.ui.app" in graph.find_modules_directly_imported_by("mammotriage.cli")
    edges: dict[tuple[str, str], list[str]] = {}
    for module in graph.modules:
        src = _package(module)
        if src is None or src in COMPOSITION_ROOT or module in DEPRECATED_ALIASES:
            continue
        assert src in rank, f"package {src} is on no layer: add it to pyproject's contract and here"
        for imported in graph.find_modules_directly_imported_by(module):
            dst = _package(imported) if imported.startswith("mammotriage.") else None
            if dst is not None and dst != src and (module, imported) not in DEPRECATED_IMPORTS:
                edges.setdefault((src, dst), []).append(f"{module} -> {imported}")
    wrong = {pair: found for pair, found in edges.items()
             if pair[1] in COMPOSITION_ROOT or rank[pair[0]] >= rank[pair[1]]}
    assert not wrong, "imports up or sideways: " + "; ".join(
        f"{a} -> {b} ({', '.join(found[:3])})" for (a, b), found in sorted(wrong.items()))
    # and explicitly: no circle in the package graph
    after: dict[str, set[str]] = {}
    for a, b in edges:
        after.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in after.get(node, ()):
            assert state.get(nxt) != 1, "circle: " + " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in list(after):
        if node not in state:
            visit(node, [])


def test_package_files_do_plain_io_with_no_circle_through_the_engine() -> None:
    """model.package reads and writes package files; building a network or an engine
    from one is model.infer's, so infer -> package and never back. (Its annotations name
    the network's types under TYPE_CHECKING: no import when it runs.)"""
    graph = _graph(runtime_only=True)
    imported = {m for m in graph.find_modules_directly_imported_by("mammotriage.model.package")
                if m.startswith("mammotriage.")}
    assert imported <= {"mammotriage.model.scoring", *(f"mammotriage.{u}" for u in LAYERS[-1])}, imported
    assert "mammotriage.model.package" in graph.find_modules_directly_imported_by("mammotriage.model.infer")
    assert not graph.find_shortest_chain("mammotriage.model.package", "mammotriage.model.infer")


def test_the_viewer_core_loads_without_qt() -> None:
    code = ("import sys, mammotriage.viewer.session, mammotriage.viewer.corrections, mammotriage.viewer.loader; "
            "sys.exit(1 if 'PySide6' in sys.modules else 0)")
    env = dict(os.environ, PYTHONPATH=str(REPO / "app"))
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=300).returncode == 0
