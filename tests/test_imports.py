"""The package's layering, read from its source: no import cycle, no upward import, no function-level import of
our own modules, and a CLI that names no family (DEVELOPERS.md, "Layout")."""

import ast
import os
import re

from jaxspeech.train import registry

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxspeech")
# lowest first; a module imports from its own layer or below
LAYERS = (
    ("storage", "audio", "text", "nn", "sharding", "data", "convert.mapping"),
    ("workdir",),
    ("train",),
    ("convert", "gan", "teachers", "sweep"),
    tuple(registry.FAMILIES),
    ("cli",),
)
# optional or heavy dependencies a function may import when it needs them (none of them is ours)
LAZY = {"torch", "transformers", "matplotlib", "libtpu", "threadpoolctl", "tokenizers", "tensorboardX"}
LAZY_BECAUSE = {("jaxspeech.train.host", "jax"): "the CLI reads train/host.py before `train` re-executes itself"}


def _modules() -> dict[str, ast.Module]:
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(folder, f)
        name = os.path.relpath(path[:-3], os.path.dirname(PACKAGE)).replace(os.sep, ".").removesuffix(".__init__")
        with open(path) as fh:
          out[name] = ast.parse(fh.read())
  return out


MODULES = _modules()


def _imports(tree: ast.Module):
  """(node, imported module names, at module level?) for every import statement; `if TYPE_CHECKING:` excluded."""
  skip = {id(n) for top in tree.body if isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test)
          for n in ast.walk(top)}
  top_level = {id(n) for n in tree.body}
  for node in ast.walk(tree):
    if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      else:
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names]
      yield node, names, id(node) in top_level


def _layer(module: str) -> int:
  rest = module.removeprefix("jaxspeech.")
  best = [(len(prefix), i) for i, layer in enumerate(LAYERS) for prefix in layer
          if rest == prefix or rest.startswith(prefix + ".")]
  assert best, f"{module} is in no layer of tests/test_imports.py"
  return max(best)[1]


def _graph() -> dict[str, set[str]]:
  return {m: {n for _, names, _ in _imports(tree) for n in names if n in MODULES and n != m}
          for m, tree in MODULES.items()}


def test_no_import_cycle():
  graph, state, cycles = _graph(), {}, []
  assert sum(map(len, graph.values())) > 200  # the graph was read

  def visit(m, stack):
    state[m] = "open"
    stack.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == "open":
        cycles.append(" → ".join(stack[stack.index(n):] + [n]))
      elif n not in state:
        visit(n, stack)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m, [])
  assert not cycles


def test_every_import_goes_down_or_across_its_layer():
  upward = [f"{m} (layer {_layer(m)}) imports {n} (layer {_layer(n)})"
            for m, targets in _graph().items() for n in sorted(targets) if _layer(n) > _layer(m)]
  assert not upward


def test_functions_import_only_optional_dependencies():
  found = [f"{m}:{node.lineno} imports {name}" for m, tree in MODULES.items() for node, names, top in _imports(tree)
           if not top for name in names
           if name.split(".")[0] not in LAZY and (m, name) not in LAZY_BECAUSE]
  assert not found


def test_the_cli_names_no_family():
  tree = MODULES["jaxspeech.cli"]
  code = ast.unparse(ast.Module(body=tree.body[1:], type_ignores=[]))  # its docstring's usage lines may
  named = [f for f in registry.FAMILIES if re.search(rf"\b{f}\b", code)]
  assert not named
