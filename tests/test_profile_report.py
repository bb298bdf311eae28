"""benchmark/profile_hooks.py's accounting on a synthetic ``-X importtime`` report: what
tracking adds is what the untracked step does not import, summed by top-level package."""

from __future__ import annotations

from benchmark.profile_hooks import added_imports, imported_modules

TRACKED = """\
import time: self [us] | cumulative | imported package
import time:       300 |        300 |     pydantic.errors
import time:       200 |        500 |   pydantic
import time:      4000 |       4000 |     pydantic.main
import time:     12000 |      16000 |   kedro_vertex_hooks.config
import time:       500 |        500 |   kedro_vertex_hooks.writer
import time:      1000 |      17500 | kedro_vertex_hooks
import time:      2500 |       2500 | requests
some other line of the step's output
"""

UNTRACKED = """\
import time: self [us] | cumulative | imported package
import time:       300 |        300 |     pydantic.errors
import time:       200 |        500 |   pydantic
import time:      2500 |       2500 | requests
"""


def test_own_import_times_are_read_per_module_in_ms():
    modules = imported_modules(TRACKED)

    assert modules["kedro_vertex_hooks.config"] == 12.0  # its own time, not the cumulative
    assert modules["pydantic.errors"] == 0.3
    assert "imported package" not in modules  # the header is not a module
    assert len(modules) == 7


def test_only_modules_the_untracked_step_lacks_count_by_top_level_package():
    added = added_imports(imported_modules(TRACKED), imported_modules(UNTRACKED))

    assert added == [("kedro_vertex_hooks", 3, 13.5), ("pydantic", 1, 4.0)]
