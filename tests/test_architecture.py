"""The folders are layers and imports only go downward (docs/architecture.md): read from the source itself."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "smart_tuner"

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = [
    {"errors", "config", "yaml_reader", "numeric", "redact", "paths", "files", "hooks", "run_logs", "interrupts",
     "cores", "seeds"},
    {"data"},
    {"tts"},
    {"adapters", "watch"},
    {"train"},
    {"study"},
    {"view"},
    {"cli", "__main__", "__init__"},
]


def layer_of(unit: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit in units)


def unit_of(path: Path, root: Path = PACKAGE) -> str:
    """The folder (subpackage) or top-level module a file belongs to."""
    return path.relative_to(root).with_suffix("").parts[0]


def imported_units(path: Path, root: Path = PACKAGE) -> set[str]:
    """Package units a module imports, lazily inside functions included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    depth = len(path.relative_to(root).parts) - 1  # 0 for smart_tuner/x.py, 1 for smart_tuner/tts/x.py
    units = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb to the package root, then the first part names the unit
                up = node.level - 1
                if up < depth:  # within its own subpackage
                    continue
                module = node.module or ""
                names = [module.split(".")[0]] if module else [alias.name for alias in node.names]
            elif node.module and node.module.startswith("smart_tuner."):
                names = [node.module.split(".")[1]]
            else:
                continue
            units.update(names)
        elif isinstance(node, ast.Import):
            units.update(a.name.split(".")[1] for a in node.names if a.name.startswith("smart_tuner."))
    return units


def test_every_unit_has_a_layer():
    units = {unit_of(p) for p in PACKAGE.rglob("*.py")}
    missing = {u for u in units if not any(u in layer for layer in LAYERS)}
    assert not missing, f"add {sorted(missing)} to LAYERS and to docs/architecture.md"


def upward_imports(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        unit = unit_of(path, root)
        for imported in imported_units(path, root):
            if layer_of(imported) > layer_of(unit):
                found.append(f"{path.relative_to(root.parent)} imports smart_tuner.{imported}")
    return found


def test_imports_only_go_downward():
    upward = upward_imports()
    assert not upward, "\n".join(upward)


def test_the_check_sees_upward_imports(tmp_path):
    """The walker must notice a violation, relative or absolute, at the top or inside a function."""
    root = tmp_path / "smart_tuner"
    (root / "data").mkdir(parents=True)
    (root / "data" / "audio.py").write_text("from ..train.trainer import Trainer\nfrom .text import SymbolTable\n")
    (root / "hooks.py").write_text("def f():\n    import smart_tuner.view.report\n")
    (root / "train").mkdir()
    (root / "train" / "runner.py").write_text("from ..adapters import build_adapters\n")  # downward: fine
    assert upward_imports(root) == ["smart_tuner/data/audio.py imports smart_tuner.train",
                                    "smart_tuner/hooks.py imports smart_tuner.view"]


# The size limits the house keeps (docs/architecture.md): a file every feature lands in needs new rooms. The files'
# limits count lines of code, so that a why-comment or a docstring never has to be folded to fit.
FUNCTION_LINES = 60
FILE_CODE_LINES = {"train/trainer.py": 350, "cli/main.py": 250, "cli/flags.py": 250}
_NOT_CODE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER,
             tokenize.ENCODING}


def code_lines(source: str) -> int:
    """The lines of ``source`` that hold code: docstrings (of the module, a class, a function), comments and blank
    lines do not count; a line of code with a comment after it does, and so does every line of a string that is not
    a docstring."""
    docstrings = []
    for node in ast.walk(ast.parse(source)):
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        if isinstance(node, kinds) and ast.get_docstring(node, clean=False) is not None:
            first = node.body[0]
            docstrings.append(((first.lineno, first.col_offset), (first.end_lineno, first.end_col_offset)))
    rows = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in _NOT_CODE or any(start <= token.start and token.end <= end for start, end in docstrings):
            continue
        rows.update(range(token.start[0], token.end[0] + 1))
    return len(rows)


def long_functions(root: Path = PACKAGE, limit: int = FUNCTION_LINES) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name}: {lines} lines")
    return found


def test_no_function_is_longer_than_the_limit():
    assert not long_functions(), "\n".join(long_functions())


def test_the_trainer_and_the_cli_stay_small():
    sizes = {name: code_lines((PACKAGE / name).read_text(encoding="utf-8")) for name in FILE_CODE_LINES}
    assert all(sizes[name] <= limit for name, limit in FILE_CODE_LINES.items()), sizes


def test_the_size_check_counts_code_only():
    source = '''"""A module docstring
over two lines."""

# a comment on its own line
import os  # a comment after code: the line counts


class A:
    """A class docstring."""

    def f(self):
        """A function docstring,

        with a blank line inside."""
        # another comment
        text = """a string that is not a docstring,
        over two lines"""
        return (text,
                os.sep)


async def g():
    "A one-line docstring in plain quotes."
    "a string statement after the first is code"
    return 1
'''
    # import os; class A:; def f(self):; text = ... (2 lines); return ... (2 lines); async def g():; the string
    # statement; return 1
    assert code_lines(source) == 10
    assert code_lines(source + "\n\n# trailing\n") == 10
    assert code_lines(source + "x = 1\n") == 11


def test_the_length_check_sees_methods_and_their_nested_functions(tmp_path):
    root = tmp_path / "smart_tuner"
    root.mkdir()
    body = "".join(f"        x{i} = {i}\n" for i in range(60))
    (root / "a.py").write_text(f"class A:\n    def outer(self):\n        def inner():\n            pass\n{body}")
    assert long_functions(root) == ["smart_tuner/a.py:2 outer: 63 lines"]
