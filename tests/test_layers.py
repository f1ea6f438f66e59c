"""The import structure: layers import downward only, and no two modules import each other in a circle.

Every import of every module of the package counts, at the top of a file or inside a function
(an import inside a function still ties the two modules together; it only delays the tie), except
those under ``if TYPE_CHECKING:``, which only name types for annotations. The layers, lowest first:

0. ``erasure.errors``, ``erasure.atomic``: the error type and atomic writes (standard library only)
1. ``erasure.pipelines``: loading, generation, the embedded model
2. ``erasure.metrics``: judges, which import only errors and the model they judge with (canvas-mini)
3. the core: configs, the registry shape, diffusion arithmetic, sampling, training, edits, requests, attacks, ``load_erased``
4. ``erasure.methods``: the erasure methods (plug-ins of the core)
5. ``erasure.api`` (``erase``) and ``erasure.evaluation``
6. what users run: the CLI, its progress display, quickstart, the app
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: import name -> source folder (pyproject's package-dir mapping)
FOLDERS = {"erasure": "erasure", "erasure.pipelines": "pipelines", "erasure.metrics": "metrics",
           "erasure.app": "app", "erasure.configs": "configs"}

LAYERS: list[tuple[int, str]] = [  # (layer, module prefix); the longest matching prefix wins
    (0, "erasure.errors"), (0, "erasure.atomic"),
    (1, "erasure.pipelines"),
    (2, "erasure.metrics"),
    (3, "erasure.config"), (3, "erasure.configs"), (3, "erasure.registry"), (3, "erasure.diffusion"), (3, "erasure.sampling"),
    (3, "erasure.training"), (3, "erasure.edit"), (3, "erasure.request"), (3, "erasure.prompts"),
    (3, "erasure.attacks"), (3, "erasure.erased"), (3, "erasure.lora"), (3, "erasure.one_step"), (3, "erasure.families"),
    (4, "erasure.methods"),
    (5, "erasure.api"), (5, "erasure.evaluation"), (5, "erasure.model_card"), (5, "erasure.export"),
    (6, "erasure.cli"), (6, "erasure.canvas_cli"), (6, "erasure.progress"), (6, "erasure.quickstart"),
    (6, "erasure.app"), (6, "erasure.__main__"), (6, "erasure"),
]
#: what metrics may import besides themselves: the error type and the model they judge with
METRICS_MAY_IMPORT = ("erasure.errors", "erasure.pipelines.canvas")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # "from package import module" imports the module; "from module import name" the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def layer(name: str) -> int:
    matches = [(len(prefix), lvl) for lvl, prefix in LAYERS if name == prefix or name.startswith(prefix + ".")]
    assert matches, f"{name} is in no layer: add it to LAYERS in tests/test_layers.py"
    return max(matches)[1]


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_every_import_points_downward():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, targets in graph().items() for b in sorted(targets) if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def test_metrics_import_only_errors_and_the_model_they_judge_with():
    wrong = [f"{a} imports {b}" for a, targets in graph().items() if a.startswith("erasure.metrics")
             for b in sorted(targets)
             if not b.startswith("erasure.metrics") and not any(b == m or b.startswith(m + ".") for m in METRICS_MAY_IMPORT)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    g = graph()
    cycles = [c for c in strongly_connected(g) if len(c) > 1]
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in cycles)


def strongly_connected(g: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm (iterative): the strongly connected components of ``g``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    counter = 0
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def test_the_checker_finds_a_cycle_and_an_upward_import():
    """The checks above can fail: a hand-made graph with a cycle and a layer-breaking edge."""
    g = {"erasure.edit": {"erasure.training"}, "erasure.training": {"erasure.edit"}, "erasure.pipelines.loading": {"erasure.edit"}}
    assert {"erasure.edit", "erasure.training"} in strongly_connected(g)
    assert layer("erasure.pipelines.loading") < layer("erasure.edit")
