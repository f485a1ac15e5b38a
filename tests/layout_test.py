"""The package's layout: rooms a reader can find, small modules, no cycles.

docs/DESIGN.md describes the rooms; these tests keep the code to it.
"""

import ast
import pathlib

from absl.testing import absltest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'ama_jax'
MAX_ROOMS = 12
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 100


def _modules():
  """{dotted module name: path} of every module in the package."""
  out = {}
  for path in sorted(PACKAGE.rglob('*.py')):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    if parts[-1] == '__init__':
      parts = parts[:-1]
    out['.'.join(parts)] = path
  return out


def _imports(path, modules):
  """Package modules that `path` imports, at any depth of its code."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
    else:
      continue
    found.update(n for n in names if n in modules)
  return found


def _cycles(graph):
  """Import cycles of {module: modules it imports}, each as a closed path."""
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = 'open'
    stack.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == 'open':
        cycles.append(stack[stack.index(dep):] + [dep])
      elif dep not in state:
        visit(dep, stack)
    stack.pop()
    state[node] = 'done'

  for module in sorted(graph):
    if module not in state:
      visit(module, [])
  return cycles


class LayoutTest(absltest.TestCase):

  def test_at_most_twelve_rooms(self):
    rooms = [p.name for p in PACKAGE.iterdir()
             if not p.name.startswith(('_', '.')) and
             (p.suffix == '.py' or (p / '__init__.py').exists())]
    self.assertLessEqual(len(rooms), MAX_ROOMS, sorted(rooms))
    for expected in ('data', 'models', 'training', 'checkpoints', 'scoring',
                     'tools', 'main.py'):
      self.assertIn(expected, rooms)

  def test_every_room_says_what_it_holds(self):
    for init in PACKAGE.glob('*/__init__.py'):
      doc = ast.get_docstring(ast.parse(init.read_text()))
      self.assertTrue(doc, f'{init}: no docstring')

  def test_module_sizes(self):
    long = {str(p.relative_to(PACKAGE)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    self.assertEqual(long, {}, f'modules over {MAX_MODULE_LINES} lines')

  def test_function_sizes(self):
    long = {}
    for path in _modules().values():
      for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
          n = node.end_lineno - node.lineno + 1
          if n > MAX_FUNCTION_LINES:
            long[f'{path.relative_to(PACKAGE)}:{node.name}'] = n
    self.assertEqual(long, {}, f'functions over {MAX_FUNCTION_LINES} lines')

  def test_no_import_cycles(self):
    modules = _modules()
    # A package's own __init__ is not an edge worth following.
    packages = {m for m, p in modules.items() if p.name == '__init__.py'}
    graph = {m: _imports(p, modules) - {m} - packages
             for m, p in modules.items()}
    self.assertEqual(_cycles(graph), [], 'import cycles')

  def test_cycles_are_found(self):
    self.assertEqual(_cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}),
                     [['a', 'b', 'c', 'a']])
    self.assertEqual(_cycles({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}), [])


if __name__ == '__main__':
  absltest.main()
