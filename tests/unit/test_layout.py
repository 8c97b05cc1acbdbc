"""The file tree keeps the data flow one way: the pipeline package (`lmnh`) depends on nothing
of the dashboard, the simulator, the stack, the benchmark or the fuzzer, and each outside
library has one home inside it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

LMNH = Path(__file__).resolve().parents[2] / "lmnh"
OURS_OUTSIDE_THE_PIPELINE = {"dashboard", "simulator", "stack", "bench", "fuzz", "tests"}
# Which pipeline modules may import each third-party library.
HOMES = {
    "confluent_kafka": {"kafka_source", "kafka_admin"},
    "psycopg2": {"database", "store", "watchdog", "migrate"},
    "yoyo": {"migrate"},
    "dotenv": {"config"},
    "prometheus_client": {"metrics"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


MODULES = sorted(LMNH.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.stem)
def test_the_pipeline_imports_only_itself_the_standard_library_and_its_dependencies(
    path: Path,
) -> None:
    imported = imported_modules(path)
    assert not imported & OURS_OUTSIDE_THE_PIPELINE
    for name in imported - {"lmnh", "__future__"}:
        if name in sys.stdlib_module_names:
            continue
        assert name in HOMES, f"{path.name} imports {name}, which the pipeline does not depend on"
        assert path.stem in HOMES[name], f"{name} is imported in {path.name}, outside its home"


def test_the_check_sees_every_form_of_import(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text(
        "import simulator.traffic\nfrom dashboard.app import create_app\n"
        "from . import sibling\ndef f():\n    import bench\n",
        encoding="utf-8",
    )
    assert imported_modules(module) == {"simulator", "dashboard", "bench"}
    assert len(MODULES) >= 10


def test_the_original_designs_files_are_at_the_top() -> None:
    """`schema.sql` and `requirements.txt` at the top, as the original design's card lists
    them: the schema the pipeline applies, and the hash-pinned lock `pip install -r` takes."""
    root = LMNH.parent
    assert (root / "schema.sql").resolve() == LMNH / "schema.sql"
    requirements = (root / "requirements.txt").read_text(encoding="utf-8")
    assert requirements == (root / "requirements.lock").read_text(encoding="utf-8")
    pinned = [line for line in requirements.splitlines() if "==" in line]
    assert pinned, "no requirement in requirements.txt"
    assert all(line.rstrip().endswith("\\") for line in pinned), "a requirement without --hash"
