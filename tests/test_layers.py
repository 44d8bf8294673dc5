"""The import map: fed_core is a library of layers (no module imports one that imports it back, however
indirectly), its domain packages keep to their floor, it never imports Streamlit or the app's ui, and the
pages reach fed_core only."""

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
    assert order.index("fed_core.federation.server") < order.index("fed_core.engines")


# What each domain must never reach: the mechanisms (privacy, MPC, HE) and the data know nothing of how a run
# is organised, so each can be read, tested and replaced on its own.
ORCHESTRATION = {"federation", "engines", "job", "cli", "attack", "encrypted", "flower_app"}
FORBIDDEN = {
    "vocabulary": ORCHESTRATION | {"config", "limits", "models", "data", "drawing", "privacy", "mpc", "he"},
    "privacy": ORCHESTRATION,
    "mpc": ORCHESTRATION | {"privacy"},
    "he": ORCHESTRATION | {"privacy", "mpc"},
    "data": ORCHESTRATION | {"privacy", "mpc", "he"},
    "drawing": ORCHESTRATION | {"privacy", "mpc", "he"},
    "models": ORCHESTRATION | {"privacy", "mpc", "he"},
    "federation": {"engines", "job", "cli", "attack", "encrypted", "flower_app", "mpc", "he"},
    # Encrypted inference runs the MPC and HE mechanisms on a model and data, within the limits: nothing of training.
    "encrypted": (ORCHESTRATION - {"encrypted"}) | {"config", "privacy", "drawing", "report"},
    "engines": {"job", "cli", "attack", "flower_app"},
}


def domain(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_each_domain_package_keeps_to_its_floor():
    crossings = [
        f"{module} imports {target}"
        for module, targets in library_graph().items()
        for target in targets
        if domain(target) in FORBIDDEN.get(domain(module), set())
    ]
    assert not crossings, crossings


def test_the_tree_shows_the_domains():
    top_level = sorted(p.stem for p in (ROOT / "fed_core").glob("*.py") if not p.stem.startswith("__"))
    assert len(top_level) <= 8, f"fed_core has {len(top_level)} top-level modules again: {top_level}"


def test_the_library_never_imports_streamlit_or_the_app():
    for path in (ROOT / "fed_core").rglob("*.py"):
        tops = {name.split(".")[0] for name in imports_of(path)}
        assert not tops & {"streamlit", "ui", "pages"}, f"{path.relative_to(ROOT)} imports {tops & {'streamlit', 'ui'}}"


def test_pages_and_ui_reach_the_library_not_each_other_upward():
    for path in (ROOT / "ui").rglob("*.py"):
        assert not any(name.startswith("pages") for name in imports_of(path)), path
