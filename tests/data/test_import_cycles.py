"""No module of showo_jax.data imports another that imports it back, directly or through others. Imports are
read from the syntax tree, lazy ones inside functions included: a cycle hidden in a function still ties the two
modules together and fails as soon as one of them is imported at the top of the other."""

import ast
import pathlib

DATA = pathlib.Path(__file__).resolve().parents[2] / "showo_jax" / "data"
PREFIX = "showo_jax.data"


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(DATA).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join([PREFIX] + parts)


def imports(source: str, modules) -> set:
  """The modules among `modules` that `source` imports, at any depth (`from showo_jax.data import images` names
  the module showo_jax.data.images; an import of a package's name alone names the package)."""
  out = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
    else:
      continue
    out.update(name for name in names if name in modules)
  return out


def import_graph(sources: dict) -> dict:
  """{module: the data modules it imports} of {module: source}."""
  return {module: imports(source, sources) - {module} for module, source in sources.items()}


def find_cycle(graph: dict):
  """One import cycle as [a, b, …, a], or None."""
  state = {}  # module -> "open" while on the current path, "done" once all it reaches is known cycle-free

  def visit(module, path):
    state[module] = "open"
    for target in sorted(graph[module]):
      if state.get(target) == "open":
        return path[path.index(target):] + [target]
      if target not in state:
        cycle = visit(target, path + [target])
        if cycle:
          return cycle
    state[module] = "done"
    return None

  for module in sorted(graph):
    if module not in state:
      cycle = visit(module, [module])
      if cycle:
        return cycle
  return None


def data_sources() -> dict:
  return {module_name(path): path.read_text(encoding="utf-8") for path in sorted(DATA.rglob("*.py"))}


def test_the_data_modules_import_one_another_without_a_cycle():
  graph = import_graph(data_sources())
  assert "showo_jax.data.images" in graph and "showo_jax.data.embedded" in graph
  assert "showo_jax.data.embedded" in graph["showo_jax.data.images"]  # the reader sees the imports it must
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_a_lazy_import_that_closes_a_cycle_is_found():
  sources = {f"{PREFIX}.a": "from showo_jax.data import b\n",
             f"{PREFIX}.b": "import os\n\ndef f():\n  from showo_jax.data import c\n",
             f"{PREFIX}.c": "import showo_jax.data.a\n",
             f"{PREFIX}.d": "from showo_jax.data import a\n"}
  assert find_cycle(import_graph(sources)) == [f"{PREFIX}.a", f"{PREFIX}.b", f"{PREFIX}.c", f"{PREFIX}.a"]
  sources[f"{PREFIX}.c"] = "import os\n"
  assert find_cycle(import_graph(sources)) is None
