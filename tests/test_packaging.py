"""The project as an installed package: no path edits in bench/ or scripts/, and the app never reaches for
dev or test code; the ui modules do nothing when imported (the frame, app.py, sets the process up once)."""

import ast
from pathlib import Path

from test_layers import imports_of

ROOT = Path(__file__).resolve().parent.parent
APP_FILES = [ROOT / "app.py", *(ROOT / "pages").glob("*.py"), *ROOT.glob("ui/**/*.py"), *ROOT.glob("fed_core/**/*.py")]


# The one script that sets PYTHONPATH, and why: not to import the project (that comes installed) but to load a
# tracing sitecustomize into the Streamlit server it starts (bench/bench_load.py --trace).
PROBE_LOADERS = {"bench/bench_load.py"}


def test_bench_and_scripts_import_the_installed_package_without_path_edits():
    for path in [*(ROOT / "bench").glob("*.py"), *(ROOT / "scripts").glob("*.py"), *(ROOT / "devtools").glob("*.py")]:
        text = path.read_text()
        assert "sys.path" not in text, path.relative_to(ROOT)
        assert "PYTHONPATH" not in text or str(path.relative_to(ROOT)) in PROBE_LOADERS, path.relative_to(ROOT)
        assert not {name.split(".")[0] for name in imports_of(path)} & {"tests", "browser_helpers", "quick_model"}


def test_the_app_never_imports_dev_or_test_code():
    for path in APP_FILES:
        tops = {name.split(".")[0] for name in imports_of(path)}
        assert not tops & {"devtools", "tests", "bench", "scripts"}, path.relative_to(ROOT)


def test_ui_modules_do_nothing_on_import():
    """No call at module level: importing ui.common once changed the process's memory settings."""
    for path in (ROOT / "ui").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            is_call = isinstance(node, ast.Expr) and not isinstance(node.value, ast.Constant)
            assert not is_call, f"{path.relative_to(ROOT)}:{node.lineno} runs {ast.unparse(node)} on import"
