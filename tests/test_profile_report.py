"""benchmark/profile_hooks.py's accounting on a synthetic ``-X importtime`` report: what
tracking adds is what the untracked step does not import, summed by top-level package."""

from __future__ import annotations

from benchmark.profile_hooks import (
    added_imports,
    imported_modules,
    paired_difference,
    stage_costs,
)

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


def test_a_stage_costs_the_median_of_its_differences_to_the_stage_before_run_together():
    # Repeat 3 hit a slow minute of the machine: every stage ran ~300 ms slower. The
    # differences of samples taken together cancel it.
    samples = {
        "untracked": [900.0, 910.0, 905.0, 1200.0, 902.0],
        "imported": [950.0, 955.0, 960.0, 1250.0, 949.0],
        "tracked": [980.0, 990.0, 985.0, 1290.0, 979.0],
    }

    rows = stage_costs(samples, ["untracked", "imported", "tracked"])

    assert [row["stage"] for row in rows] == ["untracked", "imported", "tracked"]
    assert rows[0]["least"] == 900.0 and rows[0]["median"] == 905.0
    assert "added" not in rows[0]  # the first stage is the baseline
    assert rows[1]["added"][0] == 50.0  # differences 50, 45, 55, 50, 47
    assert rows[2]["added"][0] == 30.0  # differences 30, 35, 25, 40, 30
    median, lower, upper = paired_difference(samples["tracked"], samples["untracked"])
    assert median == 80.0  # differences 80, 80, 80, 90, 77
    assert (lower, upper) == (77.0, 90.0)  # 5 pairs: too few for 95 %, their whole range
