"""Which serkit modules may import fairseq (docs/interfaces.md, "Package layering"), read from the source.

fairseq is imported at module level only in ``serkit.fairseq_ext`` (and the ``serkit_fairseq`` shim that
imports it). Inside functions, called when a fairseq checkpoint is read, built or written, it is imported
by the modules in ``LAZY``; no other module imports it. In particular the upstream forward
(``serkit.upstream.fairseq_models.layer_outputs``) and the SpeechBrain lobes take the model object that
``serkit.upstream.checkpoint`` built and never import fairseq themselves.
"""

from __future__ import annotations

import ast
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"

#: modules that import fairseq inside functions, and why
LAZY = {
    "serkit.upstream.checkpoint": "reads and builds fairseq checkpoints: the one reader",
    "serkit.upstream.tiny": "writes a random HuBERT checkpoint with fairseq's classes",
    "serkit.upstream.standins": "writes release-shaped checkpoints with fairseq's classes",
    "serkit.cli": "`serkit fairseq-components` lists fairseq's registries",
}
#: modules that import serkit.fairseq_ext (registering serkit's components with fairseq)
REGISTERS = {"serkit_fairseq", "serkit.upstream.checkpoint", "serkit.cli"}
#: modules that may call importlib.import_module with a computed name (it could name fairseq)
DYNAMIC = {"serkit.cli", "serkit.upstream.checkpoint", "serkit.fairseq_ext.masking"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PLUGINS).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST):
    """(imported module name or None for a computed one, inside a function) for every import in ``tree``."""

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, in_function
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield child.module, in_function
            elif isinstance(child, ast.Call):
                func = child.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("import_module", "__import__") and child.args:
                    arg = child.args[0]
                    literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                    yield (arg.value if literal else None), in_function
            yield from visit(child, inner)

    yield from visit(tree, False)


def _graph() -> dict[str, list[tuple[str | None, bool]]]:
    return {
        _module_name(p): list(_imports(ast.parse(p.read_text(encoding="utf-8"), str(p))))
        for p in sorted(PLUGINS.rglob("*.py"))
    }


def _is(name: str | None, package: str) -> bool:
    return name is not None and (name == package or name.startswith(package + "."))


def test_fairseq_is_imported_at_module_level_only_in_fairseq_ext():
    at_import = sorted(m for m, imps in _graph().items() if any(_is(n, "fairseq") and not f for n, f in imps))
    assert at_import and all(_is(m, "serkit.fairseq_ext") for m in at_import), at_import


def test_outside_fairseq_ext_only_the_listed_modules_import_fairseq():
    lazy = {
        m
        for m, imps in _graph().items()
        if not _is(m, "serkit.fairseq_ext") and any(_is(n, "fairseq") for n, _ in imps)
    }
    assert lazy == set(LAZY)


def test_the_upstream_forward_and_the_lobes_never_import_fairseq():
    graph = _graph()
    for module in ("serkit.upstream.fairseq_models", "serkit.upstream.base", "serkit.speechbrain.lobes"):
        assert module in graph and not any(_is(n, "fairseq") for n, _ in graph[module]), module


def test_only_the_listed_modules_register_with_fairseq_or_import_computed_names():
    graph = _graph()
    registers = {
        m
        for m, imps in graph.items()
        if not _is(m, "serkit.fairseq_ext") and any(_is(n, "serkit.fairseq_ext") for n, _ in imps)
    }
    assert registers == REGISTERS
    assert {m for m, imps in graph.items() if any(n is None for n, _ in imps)} == DYNAMIC
