"""The library never imports the command line: the command line imports the library."""

import ast
import subprocess
import sys
from pathlib import Path

import hyperattn

LIBRARY_MODULES = ["hyperattn.bench.attention", "hyperattn.bench.model", "hyperattn.eval.perplexity",
                   "hyperattn.eval.needle", "hyperattn.demo"]


def test_library_modules_import_without_the_cli():
    code = (f"import sys\nimport {', '.join(LIBRARY_MODULES)}\n"
            "print([m for m in sys.modules if m == 'hyperattn.cli' or m.startswith('hyperattn.cli.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_library_source_imports_the_cli():
    package = Path(hyperattn.__file__).parent
    for path in package.rglob("*.py"):
        if package / "cli" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom)
                     else [])
            assert not any(n == "hyperattn.cli" or n.startswith("hyperattn.cli.") for n in names), path
