"""The package's import graph: no cycles between modules nor between packages, and a
function-local import of a vss module only with its reason on the line before it
(``# local import: ...``: an optional dependency such as psycopg2 or txredisapi, or a
heavy one loaded only when a feature is used). Read from the source with ``ast``, so a cycle that only shows on
one import order is still found."""

import ast
import collections
import os

from twisted.trial import unittest

import vss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(vss.__file__)))
MARK = "local import:"


def modules():
    """{dotted name: (path, is a package __init__)} of every module under vss/."""
    found = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "vss")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            package = dotted.endswith(".__init__")
            found[dotted.removesuffix(".__init__")] = (path, package)
    return found


def imports_of(name, path, package, known):
    """[(target module, line, local?, the line before)] of the vss imports in a module.
    Imports under ``if TYPE_CHECKING:`` are left out."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    lines = source.splitlines()
    base = name if package else name.rpartition(".")[0]
    out = []

    def target(dotted):
        while dotted not in known and "." in dotted:
            dotted = dotted.rpartition(".")[0]
        return dotted if dotted in known else None

    def visit(node, local):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            local = True
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = base.split(".")
                module = ".".join(parts[:len(parts) - node.level + 1] + ([module] if module else []))
            names = [f"{module}.{alias.name}" for alias in node.names]
        else:
            names = []
        for dotted in names:
            if dotted.split(".")[0] == "vss" and (found := target(dotted)) and found != name:
                before = lines[node.lineno - 2] if node.lineno > 1 else ""
                out.append((found, node.lineno, local, before))
        for child in ast.iter_child_nodes(node):
            visit(child, local)

    visit(ast.parse(source), False)
    return out


def package_of(name, known):
    """``vss.rgm`` for ``vss.rgm.relay``; a top-level module is its own package."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or known[name][1] else name


def cycles(graph):
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


class ImportGraphTests(unittest.TestCase):
    def setUp(self):
        self.known = modules()
        self.edges = {name: imports_of(name, path, package, self.known)
                      for name, (path, package) in self.known.items()}

    def test_found_the_package(self):
        """The walk sees the modules it must judge (a wrong root would pass vacuously)."""
        for name in ("vss.node", "vss.rgm.relay", "vss.recording.recorder",
                     "vss.protocols.messages", "vss.cms.service"):
            self.assertIn(name, self.known)
        self.assertIn("vss.rgm.service", [t for t, *_ in self.edges["vss.node"]])

    def test_no_module_cycle(self):
        graph = {name: {t for t, _, local, _ in edges if not local}
                 for name, edges in self.edges.items()}
        self.assertEqual(cycles(graph), [])

    def test_no_package_cycle(self):
        """Between packages (``vss.rgm``, ``vss.recording``...), function-local imports
        included: a local import hides a cycle, it does not remove it."""
        graph = collections.defaultdict(set)
        for name, edges in self.edges.items():
            for t, *_ in edges:
                a, b = package_of(name, self.known), package_of(t, self.known)
                if a != b:
                    graph[a].add(b)
        self.assertEqual(cycles(graph), [])

    def test_local_imports_say_why(self):
        """A vss module imported inside a function says why on the line before: an
        optional dependency (psycopg2, txredisapi) or a heavy one a feature loads."""
        unexplained = [f"{name}:{line} imports {t}"
                       for name, edges in sorted(self.edges.items())
                       for t, line, local, before in edges
                       if local and MARK not in before]
        self.assertEqual(unexplained, [])

    def test_cycle_finder_finds_cycles(self):
        self.assertEqual(cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}),
                         [["a", "b", "c"]])
        self.assertEqual(cycles({"a": {"b"}, "b": set()}), [])
