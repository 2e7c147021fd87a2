"""Print the package's import graph size, any cycle, and what sampling and adapters import, with the parser of
tests/test_architecture.py (every import, function-level included). Run: python scripts/import_graph.py"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import test_architecture as ta  # noqa: E402

ta.PACKAGE = ROOT / "ei_toolkit"
graph = ta.import_graph()
print("modules", len(graph), "edges", sum(len(v) for v in graph.values()))
print("cycle:", ta.find_cycle(graph))
for m in ("ei_toolkit.sampling", "ei_toolkit.adapters"):
    print(m, "->", sorted(d.replace("ei_toolkit.", "") for d in graph[m]))
