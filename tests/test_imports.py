"""Imports go one way: no module of cnn_jax is part of an import cycle.

Function-local imports count too: a circle hidden inside a function still means the two
modules cannot be understood (or loaded) one without the other, and it breaks the day
someone moves the import to the top. The graph is read from the source with `ast`
(nothing is imported), every `import cnn_jax...` / `from cnn_jax... import ...` anywhere in
a module: importing `cnn_jax.a.b` also runs the package `cnn_jax.a` (its __init__), so an
import reaches the packages above its target too, except the importer's own ancestors
(a package that imports its own submodules is not a circle).
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "cnn_jax"

# README's layering: `training` never imports `inference` or `predict` (not even through
# another package, e.g. `viz`, whose __init__ loads runs), so neither can import it back.
LAYERS = {"cnn_jax.training": ("cnn_jax.inference", "cnn_jax.predict")}
# Paths that still break it, being removed by the viz / training work (README "Layout"):
# (module, forbidden module it reaches). Empty it as they go.
KNOWN_LAYER_BREAKS: set[tuple[str, str]] = set()  # viz/runs.py loads runs; viz draws only


def modules() -> dict[str, pathlib.Path]:
  """Every module of the package, by dotted name (a package by its own name)."""
  found = {}
  for path in sorted((ROOT / PACKAGE).rglob("*.py")):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    found[".".join(parts)] = path
  return found


def _ancestors(name: str) -> list[str]:
  parts = name.split(".")
  return [".".join(parts[:i]) for i in range(1, len(parts))]


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
  if not node.level:
    return node.module or ""
  base = module.split(".") if is_package else module.split(".")[:-1]
  base = base[:len(base) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
  """module -> the cnn_jax modules it imports, anywhere in its source."""
  mods = modules()
  graph: dict[str, set[str]] = {m: set() for m in mods}
  for mod, path in mods.items():
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom):
        base = _resolve_from(mod, is_package, node)
        for a in node.names:
          sub = f"{base}.{a.name}"
          targets.add(sub if sub in mods else base)
    for t in targets:
      if t != PACKAGE and not t.startswith(PACKAGE + "."):
        continue
      while t not in mods:  # `import cnn_jax.a.b.attr`-style names: the module holding it
        t = t.rsplit(".", 1)[0]
      mine = set(_ancestors(mod)) | {mod}
      graph[mod] |= {x for x in [*_ancestors(t), t] if x not in mine}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan), each sorted."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return sorted(out)


def one_circle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
  """A shortest circle through the first module of `comp`, for the failure message."""
  start, members = comp[0], set(comp)
  paths, seen = [[start]], {start}
  while paths:
    path = paths.pop(0)
    for w in sorted(graph[path[-1]] & members):
      if w == start:
        return path + [start]
      if w not in seen:
        seen.add(w)
        paths.append(path + [w])
  return comp


def test_the_graph_sees_function_local_and_relative_imports(tmp_path, monkeypatch):
  """The checker itself: a circle hidden in a function, through a package __init__, is found."""
  pkg = tmp_path / PACKAGE
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
  (pkg / "sub" / "leaf.py").write_text("X = 1\n")
  (pkg / "top.py").write_text("def f():\n  from cnn_jax.sub.leaf import X\n  return X\n")
  (pkg / "other.py").write_text("import cnn_jax.top\n")
  monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
  assert cycles(import_graph()) == []
  (pkg / "sub" / "leaf.py").write_text("def g():\n  from ..other import x\n")
  graph = import_graph()
  assert graph["cnn_jax.top"] == {"cnn_jax.sub", "cnn_jax.sub.leaf"}
  assert cycles(graph) == [["cnn_jax.other", "cnn_jax.sub", "cnn_jax.sub.leaf", "cnn_jax.top"]]


def test_data_modules_form_no_cycle_and_sources_only_dispatches():
  graph = import_graph()
  data = [c for c in cycles(graph) if any(m.startswith("cnn_jax.data") for m in c)]
  assert data == [], [one_circle(graph, c) for c in data]
  # The leaves the back-ends share import nothing else from the package.
  for leaf in ("cnn_jax.data.split", "cnn_jax.data.images"):
    assert {m for m in graph[leaf] if m.startswith("cnn_jax.data.")} == set(), leaf
  for backend in ("voc", "synthetic", "cache", "tfds_data", "tfds_detection", "folders"):
    assert "cnn_jax.data.sources" not in graph[f"cnn_jax.data.{backend}"], backend


def test_no_import_cycle_in_cnn_jax():
  graph = import_graph()
  found = cycles(graph)
  assert found == [], "import cycles: " + "; ".join(
      " -> ".join(one_circle(graph, c)) for c in found)


def reaches(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
  """Every module `start` imports, directly or not: module -> one import path to it."""
  paths, todo = {start: [start]}, [start]
  while todo:
    v = todo.pop(0)
    for w in sorted(graph[v]):
      if w not in paths:
        paths[w] = paths[v] + [w]
        todo.append(w)
  return paths


def test_training_never_reaches_inference_or_predict():
  graph = import_graph()
  broken = {}
  for package, forbidden in LAYERS.items():
    for mod in (m for m in graph if m == package or m.startswith(package + ".")):
      paths = reaches(graph, mod)
      broken.update({(mod, f): paths[f] for f in forbidden if f in paths})
  new = {k: v for k, v in broken.items() if k not in KNOWN_LAYER_BREAKS}
  assert new == {}, "; ".join(" -> ".join(p) for p in new.values())
