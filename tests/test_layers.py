"""The import map: fed_core is a library of layers (no module imports one that imports it back, however
indirectly), never imports Streamlit or the app's ui, and the pages reach fed_core only."""

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module imported at any depth of the file (relative imports resolved)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def library_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in (ROOT / "fed_core").rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def test_fed_core_imports_form_layers_without_a_cycle():
    graph = library_graph()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"modules import each other in a loop: {' -> '.join(exc.args[1])}") from None
    assert order.index("fed_core.server") < order.index("fed_core.engines")
    assert "fed_core.engines" not in graph["fed_core.server"] and "fed_core.job" not in graph["fed_core.server"]


def test_the_library_never_imports_streamlit_or_the_app():
    for path in (ROOT / "fed_core").rglob("*.py"):
        tops = {name.split(".")[0] for name in imports_of(path)}
        assert not tops & {"streamlit", "ui", "pages"}, f"{path.relative_to(ROOT)} imports {tops & {'streamlit', 'ui'}}"


def test_pages_and_ui_reach_the_library_not_each_other_upward():
    for path in (ROOT / "ui").rglob("*.py"):
        assert not any(name.startswith("pages") for name in imports_of(path)), path
