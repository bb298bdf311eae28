"""sample_project as a KFP v2 pipeline: run by the README's main job on KFP's local runner.

Two full pipeline runs (clean and failing) of ``scripts/run_kfp_local.py``, each step a real
``kedro`` process, against a real MLflow server, read through its API and looked at in
MLflow's UI with headless Chromium (1400x1000, no scrolling; screenshots in
test-artifacts/browser); plus the compiled YAML spec for Vertex AI.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from kedro_vertex_hooks.lifecycle import TIMELINE_ARTIFACT
from kedro_vertex_hooks.naming import (
    TAG_ERROR,
    TAG_FAILED_NODE,
    TAG_JOB_ID,
    TAG_JOB_NAME,
    TAG_RUN_NOTE,
)
from kedro_vertex_hooks.summary import run_page_url
from tests.support.browser import VIEWPORT, Browser, chromium
from tests.support.project import (
    FULL_PYTHON,
    REPO,
    SAMPLE_NODES,
    Project,
    base_env,
    load_script,
)
from tests.support.tracked import node_statuses, note_node_rows

MAIN_JOB = REPO / "scripts" / "run_kfp_local.py"

# sample_project's Kedro dependencies (pipelines/training/pipeline.py).
KEDRO_PARENTS = {
    "make_raw_data": set(),
    "clean_data": {"make_raw_data"},
    "split_train": {"clean_data"},
    "split_test": {"clean_data"},
    "compute_stats": {"clean_data"},
    "train_linear": {"split_train"},
    "train_tree": {"split_train"},
    "evaluate_linear": {"train_linear", "split_test"},
    "evaluate_tree": {"train_tree", "split_test"},
    "select_model": {"evaluate_linear", "evaluate_tree"},
    "write_report": {"select_model", "compute_stats"},
    "quality_gate": {"write_report"},
    "publish": {"quality_gate"},
}


@pytest.fixture(scope="module")
def kfp_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return Project.copy(tmp_path_factory.mktemp("kfp") / "project", python=FULL_PYTHON)


def main_job(project: Project, server, run_name: str, *extra: str) -> str:
    """Run the README's main job; its stdout (the run report at the end)."""
    result = subprocess.run(
        [sys.executable, MAIN_JOB, "--project-dir", project.root, "--run-name", run_name, *extra],
        env=base_env(MLFLOW_TRACKING_URI=server.uri),
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = log_file(result.stdout)
    tail = log.read_text(errors="replace")[-5000:] if log and log.exists() else ""
    assert result.returncode == 0, result.stdout + result.stderr[-3000:] + tail
    return result.stdout


def log_file(stdout: str) -> Path | None:
    """The log file the job names in its first lines (all of Kedro's and KFP's output)."""
    found = re.search(r"^Every log line goes to (\S+) ", stdout, re.MULTILINE)
    return Path(found.group(1)) if found else None


def step_lines(stdout: str) -> dict[str, list[str]]:
    """The live view: for each step, the words printed as it started and ended."""
    seen: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        if found := re.match(r"^  (\w+) +(\S+)", line):
            seen.setdefault(found.group(2), []).append(found.group(1))
    return seen


def the_run(client, stdout: str, run_name: str):
    """The run the job reported, checked to be the only run of its pipeline job."""
    run_id = re.search(r"^MLflow run id: (\w+)$", stdout, re.MULTILINE).group(1)
    run = client.get_run(run_id)
    assert run.info.run_name == run_name
    same_job = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.{TAG_JOB_ID} = '{run.data.tags[TAG_JOB_ID]}'",
    )
    assert [r.info.run_id for r in same_job] == [run_id]
    return run


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements: list[str] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.elements.append(tag)

    def handle_data(self, data):
        self.text += data


def assert_seen(browser: Browser, text: str) -> None:
    """``text`` is on screen, not covered, clipped or below the fold (no scrolling)."""
    found = browser.find_text(text)
    assert found is not None, f"{text!r} is not on the page"
    assert found.visible and found.bottom <= VIEWPORT[1], (text, found)


# In timeline.html, inside MLflow's artifact frame: the frame's view and every row's label.
TIMELINE_ROWS = """
const root = document.documentElement;
const rows = [...document.querySelectorAll('svg text.label')].map((el) => {
  const r = el.getBoundingClientRect();
  return {text: el.textContent, failed: el.classList.contains('failed'),
          top: r.top, bottom: r.bottom, right: r.right};
});
return {width: root.clientWidth, height: root.clientHeight,
        overflowX: root.scrollWidth - root.clientWidth, rows: rows};
"""


def look_at_run(
    browser: Browser, server, run, name: str, must_see: list[str], failed: str | None = None
) -> None:
    """The run's page, then its timeline.html in the artifact view, as a person opens them."""
    page = run_page_url(server.uri, run.info.experiment_id, run.info.run_id)
    browser.get(page, wait_for=must_see[0])
    browser.screenshot(f"{name}-run-page")
    for text in must_see:
        assert_seen(browser, text)
    # the link opens MLflow 3's "Model training" view (a runs list), not its default GenAI one
    # ("Evaluation runs" in its sidebar, "Evaluations" in the breadcrumb)
    assert_seen(browser, "Model registry")
    assert browser.find_text("Evaluation runs") is None

    artifacts = run_page_url(server.uri, run.info.experiment_id, run.info.run_id, "artifacts")
    browser.get(artifacts, wait_for=TIMELINE_ARTIFACT)
    browser.click_text(TIMELINE_ARTIFACT)
    frame = browser.wait_for_element("iframe")
    browser.screenshot(f"{name}-timeline")
    box = frame.rect
    assert box["y"] >= 0 and box["y"] + box["height"] <= VIEWPORT[1], box
    inside = browser.in_frame(frame, TIMELINE_ROWS)
    assert inside["overflowX"] <= 0, f"the timeline is wider than its pane: {inside}"
    labels = [row["text"] for row in inside["rows"]]
    assert sorted(labels) == sorted(SAMPLE_NODES), labels
    assert [row["text"] for row in inside["rows"] if row["failed"]] == ([failed] if failed else [])
    for row in inside["rows"]:  # every row inside the frame's view, the frame in the window's
        assert row["top"] >= 0 and row["bottom"] <= inside["height"], row
        assert row["right"] <= inside["width"], row
        assert box["y"] + row["bottom"] <= VIEWPORT[1], row


def test_clean_pipeline_leaves_one_finished_run_with_summary_and_timeline(
    client, mlflow_server, kfp_project, tmp_path
):
    stdout = main_job(kfp_project, mlflow_server, "kfp-clean")

    assert len(stdout.splitlines()) <= 40, stdout  # a short, live view; the logs in a file
    steps = step_lines(stdout)
    assert all(steps[name] == ["started", "SUCCESS"] for name in SAMPLE_NODES), stdout
    assert steps["start-run-step"] == steps["finalize-step"] == ["started", "SUCCESS"]
    assert "Running node: publish" in log_file(stdout).read_text()
    run = the_run(client, stdout, "kfp-clean")
    assert run.info.status == "FINISHED"
    assert "Status:        FINISHED" in stdout
    tags = run.data.tags
    assert tags[TAG_JOB_NAME].startswith("sample-project-")
    statuses = node_statuses(client, run.info.run_id)
    assert statuses == dict.fromkeys(SAMPLE_NODES, "completed")
    note = tags[TAG_RUN_NOTE]
    assert note.startswith("**FINISHED**: the pipeline succeeded  \n13 of 13 nodes completed")
    rows = note_node_rows(note)
    assert len(rows) == 13 and all(row[2] == "completed" for row in rows)
    assert f"job id {tags[TAG_JOB_ID]}" in note.replace("\\", "")  # markdown escapes
    ran = [row[1] for row in rows]
    for name, parents in KEDRO_PARENTS.items():  # in the order they ran
        assert all(ran.index(parent) < ran.index(name) for parent in parents), name

    local = client.download_artifacts(run.info.run_id, TIMELINE_ARTIFACT, str(tmp_path))
    page = Path(local).read_text(encoding="utf-8")
    parsed = _Page()
    parsed.feed(page)
    assert "script" not in parsed.elements and "link" not in parsed.elements
    assert "://" not in page and "url(" not in page
    # One bar per node and, before it, one for its step's process start-up (KFP's local
    # runner starts a container-like subprocess per task).
    assert page.count('class="bar"') == page.count('class="startup"') == 13
    assert all(name in parsed.text for name in SAMPLE_NODES)

    with chromium() as browser:  # what a person sees in MLflow's UI, without scrolling
        must_see = ["FINISHED: the pipeline succeeded", "13 of 13 nodes completed", "Finished"]
        look_at_run(browser, mlflow_server, run, "clean", must_see)


def test_failing_pipeline_still_runs_the_exit_handler_and_leaves_one_failed_run(
    client, mlflow_server, kfp_project
):
    stdout = main_job(kfp_project, mlflow_server, "kfp-failing", "--fail")

    steps = step_lines(stdout)
    assert steps["quality_gate"] == ["started", "FAILURE"], stdout
    assert "publish" not in steps and steps["finalize-step"] == ["started", "SUCCESS"], stdout
    assert "Summary:       FAILED: the pipeline failed at node quality_gate: ValueError" in stdout
    run = the_run(client, stdout, "kfp-failing")
    assert run.info.status == "FAILED"
    tags = run.data.tags
    assert tags[TAG_FAILED_NODE] == "quality_gate"
    assert tags[TAG_ERROR].startswith("ValueError: quality gate rejected the model")
    statuses = node_statuses(client, run.info.run_id)
    assert statuses["quality_gate"] == "failed"
    assert "publish" not in statuses  # KFP skipped it
    note = tags[TAG_RUN_NOTE]  # written by the exit handler only
    first, second = note.splitlines()[:2]  # what MLflow shows of a collapsed description
    assert first.startswith("**FAILED**: the pipeline failed at node **quality\\_gate**: ")
    assert "ValueError: quality gate rejected the model" in first
    assert second.startswith("11 of 13 nodes completed, 1 failed, 1 not run")
    assert ["13", "publish", "not run"] in note_node_rows(note)
    assert TIMELINE_ARTIFACT in [a.path for a in client.list_artifacts(run.info.run_id)]

    with chromium() as browser:  # what a person sees in MLflow's UI, without scrolling
        must_see = [
            "FAILED: the pipeline failed at node quality_gate: ValueError: quality gate "
            "rejected the model",
            "11 of 13 nodes completed, 1 failed, 1 not run",
            "Failed",  # MLflow's own status badge
        ]
        look_at_run(browser, mlflow_server, run, "failed", must_see, failed="quality_gate")


def test_the_pipeline_compiles_to_a_vertex_spec_with_kedro_dependencies(kfp_project, tmp_path):
    spec_path = tmp_path / "pipeline.yaml"
    result = subprocess.run(
        [sys.executable, str(kfp_project.root / "kfp_pipeline.py"), "--compile", str(spec_path)],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    spec = yaml.safe_load(spec_path.read_text())

    root = spec["root"]["dag"]["tasks"]
    finalize = next(t for t in root.values() if t["taskInfo"]["name"] == "mlflow-finalize")
    assert finalize["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert "taskFinalStatus" in finalize["inputs"]["parameters"]["status"]
    body = spec["components"][root[finalize["dependentTasks"][0]]["componentRef"]["name"]]
    tasks = body["dag"]["tasks"]
    display = {key: task["taskInfo"]["name"] for key, task in tasks.items()}
    assert sorted(display.values()) == sorted([*SAMPLE_NODES, "mlflow-start-run"])
    start_key = next(key for key, name in display.items() if name == "mlflow-start-run")
    for key, task in tasks.items():
        if key == start_key:
            continue
        parents = {display[dep] for dep in task["dependentTasks"]} - {"mlflow-start-run"}
        assert parents == KEDRO_PARENTS[display[key]], display[key]
        inputs = task["inputs"]["parameters"]
        assert inputs["run_id"]["taskOutputParameter"]["producerTask"] == start_key
        assert inputs["job_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
        assert inputs["job_name"]["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}"
        assert task["cachingOptions"] == {}  # a cached step would skip logging to the run


def test_the_live_view_never_reads_a_half_written_line(tmp_path):
    """The demo follows its log while the pipeline writes it: a task line caught mid-write
    must still read SUCCESS, not SUC."""
    demo = load_script(MAIN_JOB)
    log = tmp_path / "pipeline.log"
    log.write_text("")
    writer = (
        f"import time\nf = open({str(log)!r}, 'a')\n"
        "f.write(\"Executing task 'start-run-step'\\n\"); f.flush(); time.sleep(0.5)\n"
        "f.write(\"Task 'start-run-step' finished with status SUC\"); f.flush(); time.sleep(0.6)\n"
        "f.write('CESS\\n'); f.flush()\n"
    )
    seen = io.StringIO()

    code = demo.follow(subprocess.Popen([sys.executable, "-c", writer]), log, demo.LiveView(seen))

    assert code == 0
    assert step_lines(seen.getvalue()) == {"start-run-step": ["started", "SUCCESS"]}
