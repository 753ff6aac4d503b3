"""The layout's two promises: imports only go down (library → adapters → apps), and the shipped
configs are found by name from an installed wheel, not through the repository."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

LAYERS = {"pretrain": 0, "d2_plugin": 1, "mmseg_plugin": 1, "flowssl": 2}


def _imports(path: Path, package: str) -> set[str]:
    """Top-level modules a file imports, relative imports resolved inside its package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = path.relative_to(REPO).with_suffix("").parts[: -node.level]
                found.add(".".join([*parts, *([node.module] if node.module else [])]))
            else:
                found.add(node.module or "")
    return found


def _modules(package: str) -> list[Path]:
    return [p for p in (REPO / package).rglob("*.py") if "configs" not in p.relative_to(REPO / package).parts]


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_imports_only_go_down(package):
    """Nothing imports a layer above its own, and the two adapters never import each other."""
    wrong = []
    for path in _modules(package):
        for name in _imports(path, package):
            top = name.split(".")[0]
            if top in LAYERS and top != package and LAYERS[top] >= LAYERS[package]:
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_library_has_no_import_cycles():
    """Module-level imports inside ``pretrain`` form no cycle (lazy imports inside functions count too:
    a cycle there is a sign a concern has two homes)."""
    graph: dict[str, set[str]] = {}
    for path in _modules("pretrain"):
        mod = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        graph[mod] = {n for n in _imports(path, "pretrain") if n.startswith("pretrain")}
    known = set(graph)

    def target(name: str) -> str | None:  # "pretrain.flow.sources" or a name imported from a package
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: {t for n in deps if (t := target(n)) and t != m and not m.startswith(t + ".")}
             for m, deps in graph.items()}
    # a package's __init__ re-exporting its children is not a cycle: drop edges into a parent package
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in edges.get(m, ()):
            if state.get(t) == 1:
                cycles.append(" → ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_an_installed_wheel_finds_its_configs_by_name(tmp_path):
    """Build the wheel from the sources, install it alone into a folder, and resolve a config by the
    name the README uses from a folder that is not the repository."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in [*LAYERS, "configs"]:
        shutil.copytree(REPO / package, src / package, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", ".", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist")], cwd=src, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("flowssl-*.whl"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert not (site / "pretrain" / "configs").is_symlink()  # a copy in the wheel, not a link to a checkout
    code = ("import pretrain, pretrain.config as c, flowssl.bench as b; "
            "print(pretrain.__file__); print(c.resolve_config('pretrain/flowe_r14_synthetic_demo.py')); "
            "print(c.resolve_config('configs/bench/tiny.py')); print(b.PRESETS['tiny'].is_file())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    where, flowe, tiny, preset = out.stdout.split()
    assert Path(where).is_relative_to(site)
    assert Path(flowe) == site / "pretrain/configs/pretrain/flowe_r14_synthetic_demo.py"
    assert Path(tiny) == site / "pretrain/configs/bench/tiny.py" and preset == "True"
    assert (Path(flowe).read_text() == (REPO / "configs/pretrain/flowe_r14_synthetic_demo.py").read_text())
