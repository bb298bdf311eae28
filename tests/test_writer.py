"""RunWriter against a real MLflow server behind the loopback proxy: batching, outages,
budgets, strict mode, parameter conflicts and late copies of old writes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from kedro_vertex_hooks.batching import REQUESTS_AT_ONCE, START_LINGER_S, Write
from kedro_vertex_hooks.mlflow_client import MlflowTrackingClient
from kedro_vertex_hooks.naming import TAG_PARAM_CONFLICT, node_key
from kedro_vertex_hooks.records import end_points, start_points
from kedro_vertex_hooks.rest_client import RestTrackingClient
from kedro_vertex_hooks.retry import TrackingUnreachableError
from kedro_vertex_hooks.summary import collect_nodes
from kedro_vertex_hooks.tracking_client import Metric
from kedro_vertex_hooks.writer import ParamConflictError, RunWriter
from tests.support.proxy import MlflowProxy

LOG_BATCH = "POST /api/2.0/mlflow/runs/log-batch"
STATUS = "kedro.stage"  # a tag that later writes change


def metric(key: str, value: float) -> Metric:
    return Metric(key, value, 1_700_000_000_000)


@pytest.fixture(autouse=True)
def quick_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's own HTTP retries, as the package sets them for a step, without the backoff."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


@pytest.fixture(scope="module")
def proxy(mlflow_server) -> Iterator[MlflowProxy]:
    with MlflowProxy(mlflow_server.uri, latency_s=0) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_proxy(proxy: MlflowProxy) -> Iterator[None]:
    proxy.up()
    proxy.clear_faults()
    proxy.reset_stats()
    yield
    proxy.up()
    proxy.clear_faults()


@pytest.fixture
def run_id(client, request: pytest.FixtureRequest) -> str:
    experiment_id = client.create_experiment(f"writer-{request.node.name}")
    return client.create_run(experiment_id).info.run_id


@pytest.fixture(params=["rest", "mlflow"])
def make_writer(request: pytest.FixtureRequest) -> Callable[..., RunWriter]:
    """Writers over either client the hooks use: REST in node steps, MlflowClient otherwise."""

    def make(proxy: MlflowProxy, run_id: str, **overrides) -> RunWriter:
        if request.param == "rest":
            client = RestTrackingClient(proxy.uri)
        else:
            client = MlflowTrackingClient(tracking_uri=proxy.uri)
        return RunWriter(client, run_id, {}, **{**WRITER_OPTIONS, **overrides})

    make.client_kind = request.param  # type: ignore[attr-defined]
    return make


WRITER_OPTIONS = {
    "background": True,
    "outage_budget_s": 20.0,
    "on_param_conflict": "tag",
    "strict": False,
}


def log_batches(proxy: MlflowProxy) -> int:
    proxy.wait_idle()
    return proxy.stats().by_endpoint.get(LOG_BATCH, 0)


def most_log_batches_at_once(proxy: MlflowProxy) -> int:
    """The most log-batch requests the server was working on at the same moment."""
    proxy.wait_idle()
    spans = [(r.started, r.started + r.seconds) for r in proxy.stats().records]
    return max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)


def test_queued_writes_go_in_few_requests(make_writer, client, proxy, run_id):
    writer = make_writer(proxy, run_id)
    proxy.down()  # hold the queue while it fills, then let it drain at once
    for index in range(50):
        writer.submit(Write(params={f"p{index}": str(index)}, metrics=[metric(f"m{index}", index)]))
    proxy.up()
    report = writer.close()
    data = client.get_run(run_id).data
    assert len(data.params) == 50
    assert len(data.metrics) == 50
    assert report.delivered == 100
    assert report.given_up == 0
    assert log_batches(proxy) <= 2  # the first write, then everything that queued behind it


def test_a_short_nodes_start_and_end_share_one_request(make_writer, client, proxy, run_id):
    """A node of a few hundred ms (the join of a 1000-node pipeline) longer than the writer's
    usual 20 ms linger: its start waits for its end, one request for both."""
    writer = make_writer(proxy, run_id)
    start = Write(params={"alpha": "1"}, tags={STATUS: "running"}, linger_s=START_LINGER_S)
    writer.submit(start)
    time.sleep(0.2)  # the node runs
    writer.submit(Write(tags={STATUS: "completed"}, metrics=[metric("duration", 0.2)]))
    writer.close()
    assert log_batches(proxy) == 1
    data = client.get_run(run_id).data
    assert (data.params["alpha"], data.tags[STATUS]) == ("1", "completed")


def test_a_long_nodes_start_reaches_the_run_while_it_runs(make_writer, client, proxy, run_id):
    writer = make_writer(proxy, run_id)
    writer.submit(Write(tags={STATUS: "running"}, linger_s=START_LINGER_S))
    deadline = time.monotonic() + 30
    while client.get_run(run_id).data.tags.get(STATUS) != "running":
        assert time.monotonic() < deadline, "the start was not sent while its node ran"
        time.sleep(0.1)
    assert log_batches(proxy) == 1
    writer.submit(Write(tags={STATUS: "completed"}))
    writer.close()
    assert log_batches(proxy) == 2
    assert client.get_run(run_id).data.tags[STATUS] == "completed"


def test_a_batch_whose_requests_are_full_is_sent_without_waiting_out_its_linger(
    make_writer, client, proxy, run_id
):
    """Fast nodes with 20 params each, in one process: once a write no longer fits the
    batch's requests, waiting out the linger would only queue requests for the step's end.
    The batch goes at once; the write that did not fit starts the next one."""
    writer = make_writer(proxy, run_id)
    for node in range(6):
        writer.submit(Write(params={f"node_{node}.p{i}": str(i) for i in range(20)}, linger_s=60))
    deadline = time.monotonic() + 30
    while len(client.get_run(run_id).data.params) < 100:
        assert time.monotonic() < deadline, "a full batch waited for its writes' linger"
        time.sleep(0.1)
    writer.close()
    assert len(client.get_run(run_id).data.params) == 120
    assert log_batches(proxy) == 2


def test_a_wide_nodes_start_and_end_still_share_its_requests(make_writer, client, proxy, run_id):
    """A node with 1000 params: its end fits the ten requests of its start, so both wait
    for each other instead of taking an eleventh."""
    writer = make_writer(proxy, run_id)
    params = {f"param_{index:04d}": str(index) for index in range(1000)}
    writer.submit(Write(params=params, tags={STATUS: "running"}, linger_s=START_LINGER_S))
    time.sleep(0.2)  # the node runs
    writer.submit(Write(tags={STATUS: "completed"}, metrics=[metric("duration", 0.2)]))
    writer.close()
    assert log_batches(proxy) == 10
    assert client.get_run(run_id).data.tags[STATUS] == "completed"


def test_an_outage_is_waited_out_and_reported_as_late(make_writer, client, proxy, run_id, caplog):
    writer = make_writer(proxy, run_id)
    writer.submit(Write(tags={STATUS: "running"}))
    writer.flush()
    proxy.down(seconds=3)
    writer.submit(Write(params={"alpha": "1"}, tags={STATUS: "completed"}))
    with caplog.at_level(logging.INFO, logger="kedro_vertex_hooks"):
        report = writer.close()
    data = client.get_run(run_id).data
    assert data.params["alpha"] == "1"
    assert data.tags[STATUS] == "completed"
    assert (report.delivered, report.delivered_late, report.given_up) == (3, 2, 0)
    assert "3 value(s) delivered, 2 of them late after a tracking outage, 0 given up" in (
        caplog.text
    )
    assert "tracking server answering again" in caplog.text


def test_past_the_budget_writes_are_given_up_and_the_budget_is_not_waited_twice(
    make_writer, client, proxy, run_id, caplog
):
    writer = make_writer(proxy, run_id, background=False, outage_budget_s=2)
    proxy.fail(502, path_contains="runs/log-batch")  # a gateway whose server is gone
    writer.submit(Write(params={"a": "1"}, tags={"t": "x"}))  # never raises: non-strict
    assert writer.report.given_up == 2
    proxy.reset_stats()
    writer.submit(Write(params={"b": "2"}))
    # The outage's budget is spent: one call, no waiting. MlflowClient's call is an attempt
    # and two HTTP retries (urllib3 may spend one more on a kept-alive connection the proxy
    # dropped); the REST client leaves retrying writes to the writer. Waiting out the budget
    # again would mean a call every 0.5-1 s for 2 s.
    assert log_batches(proxy) in ((1,) if make_writer.client_kind == "rest" else (3, 4))
    report = writer.close()
    assert report.given_up == 3
    assert "502" in (report.last_error or "")  # the server's answer, named in the warning
    assert "3 given up" in caplog.text
    assert report.undelivered == ["a", "t", "b"]  # by name, for the step's error
    # The server answers again: the next write goes through at once.
    proxy.clear_faults()
    writer.submit(Write(params={"c": "3"}))
    assert client.get_run(run_id).data.params == {"c": "3"}


def test_a_busy_server_is_waited_for_past_the_outage_budget(make_writer, client, proxy, run_id):
    """Overload is not an outage: 503s and slow answers for longer than outage_budget_s do
    not make a write give up while the server keeps answering."""
    writer = make_writer(proxy, run_id, background=False, outage_budget_s=1)
    proxy.fail(503, seconds=4, path_contains="runs/log-batch")
    writer.submit(Write(params={"a": "1"}, tags={STATUS: "completed"}))
    assert client.get_run(run_id).data.params == {"a": "1"}
    assert (writer.report.delivered_late, writer.report.given_up) == (2, 0)


def test_a_slow_server_is_given_more_time_not_more_copies(client, proxy, run_id, monkeypatch):
    """A request that timed out is still in the server's queue: resending it with the same
    timeout only adds copies (64 steps doing so kept a PostgreSQL-backed server busy for
    ever). The node steps' REST client doubles its wait after each read timeout: answers
    taking 2.5 s with a 1 s timeout land on the third request. (MlflowClient reads its
    fixed timeout from MLflow's settings; only the pauses between its tries grow.)"""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    options = {**WRITER_OPTIONS, "background": False, "outage_budget_s": 1, "overload_budget_s": 15}
    writer = RunWriter(RestTrackingClient(proxy.uri), run_id, {}, **options)
    proxy.slow(2.5, path_contains="runs/log-batch")
    writer.submit(Write(params={"a": "1"}, tags={STATUS: "completed"}))
    assert client.get_run(run_id).data.params == {"a": "1"}
    assert log_batches(proxy) == 3  # timed out after 1 s, then 2 s; answered within 4 s
    assert (writer.report.delivered_late, writer.report.given_up) == (2, 0)


def test_overload_budget_bounds_the_wait_for_a_busy_server(make_writer, proxy, run_id):
    writer = make_writer(proxy, run_id, strict=True, outage_budget_s=30, overload_budget_s=1)
    proxy.fail(429, path_contains="runs/log-batch")
    with pytest.raises(
        TrackingUnreachableError, match=r"stayed busy for 1 s \(overload_budget_s\)"
    ):
        writer.submit(Write(params={"a": "1"}))


def test_strict_mode_raises_instead_of_giving_up(make_writer, proxy, run_id):
    writer = make_writer(proxy, run_id, strict=True, outage_budget_s=1)
    proxy.fail(502, path_contains="/api/2.0/mlflow/")
    with pytest.raises(
        TrackingUnreachableError, match=r"did not answer for 1 s \(outage_budget_s\)"
    ):
        writer.submit(Write(params={"a": "1"}))
    with pytest.raises(TrackingUnreachableError):
        writer.read_outcomes()


def test_outcomes_that_cannot_be_read_are_none_with_a_warning(make_writer, proxy, run_id, caplog):
    writer = make_writer(proxy, run_id, outage_budget_s=1)
    proxy.fail(502, path_contains="metrics/get-history")
    assert writer.read_outcomes() is None
    assert "cannot read node outcomes" in caplog.text


def test_a_param_another_step_logged_differently_becomes_a_conflict_tag(
    make_writer, client, proxy, run_id
):
    client.log_param(run_id, "seed", "42")  # another container, after this one read the run
    writer = make_writer(proxy, run_id, background=False)
    writer.submit(Write(params={"seed": "7", "rows": "10"}))
    data = client.get_run(run_id).data
    assert data.params == {"seed": "42", "rows": "10"}
    assert data.tags[node_key(TAG_PARAM_CONFLICT, "seed")] == "7"
    assert writer.report.conflicts == ["seed"]
    # Same value again (a retried step): silent, nothing sent for it.
    writer.submit(Write(params={"seed": "42"}))
    assert writer.report.conflicts == ["seed"]


def test_a_conflict_fails_the_caller_when_configured(make_writer, client, proxy, run_id):
    client.log_param(run_id, "seed", "42")
    writer = make_writer(proxy, run_id, background=False, on_param_conflict="fail")
    with pytest.raises(ParamConflictError, match=r"'seed' is already logged .* '42'.*'7'"):
        writer.submit(Write(params={"seed": "7"}))


def test_a_late_copy_of_a_nodes_start_cannot_hide_its_end(
    make_writer, client, proxy, run_id, monkeypatch
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    writer = make_writer(proxy, run_id, background=False)
    # The first request is answered after the client gave up (1 s): it is sent again, and
    # the server still applies the first copy 3 s later, after the node's end.
    proxy.slow(3, count=1, path_contains="runs/log-batch")
    writer.submit(Write(metrics=start_points(0, 1_700_000_000.0, None)))
    writer.submit(Write(metrics=end_points(0, True, 0.5, 100.0)))
    proxy.wait_idle(timeout_s=10)

    outcomes = writer.read_outcomes()
    assert outcomes is not None and outcomes.completed == {0}
    history = {
        key: client.get_metric_history(run_id, key)
        for key in ("kedro.node_started_at", "kedro.node_completed")
    }
    # The copies are the same point (key, step, time, value): MLflow keeps it once.
    assert len(history["kedro.node_started_at"]) == 1
    assert [n.status for n in collect_nodes({}, history, ["train"])] == ["completed"]


@pytest.mark.parametrize("fault", ["cut", "reset"])
def test_cut_and_reset_connections_are_retried_without_a_conflict(
    make_writer, client, proxy, run_id, fault
):
    writer = make_writer(proxy, run_id, background=False)
    # "cut": the server applied the batch but the answer was lost; "reset": it never saw it.
    # Three in a row outlast MLflow's own two retries, so the writer retries too.
    getattr(proxy, fault)(count=3, path_contains="runs/log-batch")
    writer.submit(
        Write(params={"seed": "42"}, tags={STATUS: "completed"}, metrics=[metric("m", 1)])
    )
    data = client.get_run(run_id).data
    assert data.params == {"seed": "42"}
    assert data.tags[STATUS] == "completed"
    assert data.metrics["m"] == 1.0
    assert not [key for key in data.tags if key.startswith(TAG_PARAM_CONFLICT)]
    assert (writer.report.delivered_late, writer.report.given_up) == (3, 0)
    assert writer.report.conflicts == []


def test_a_thousand_params_and_metrics_arrive_in_ten_requests(make_writer, client, proxy, run_id):
    """The server takes at most 100 params per request: a wide node is split, never refused."""
    writer = make_writer(proxy, run_id, background=False)
    params = {f"param_{index:04d}": str(index) for index in range(1000)}
    metrics = {f"metric_{index:04d}": float(index) for index in range(500)}

    points = [metric(key, value) for key, value in metrics.items()]
    writer.submit(Write(params=dict(params), metrics=points, tags={"t": "x"}))
    report = writer.close()

    assert report.given_up == 0 and report.delivered == 1501
    assert log_batches(proxy) == 10
    data = client.get_run(run_id).data
    assert data.params == params
    assert {k: v for k, v in data.metrics.items() if k.startswith("metric_")} == metrics


def test_a_wide_write_to_a_tracking_server_sends_its_requests_at_once(
    make_writer, client, proxy, run_id
):
    """1000 params take ten requests; a tracking server gets them four at a time, so a node
    with many params waits about three round trips instead of ten."""
    proxy.latency_s = 0.2
    try:
        writer = make_writer(proxy, run_id, requests_at_once=REQUESTS_AT_ONCE)
        params = {f"param_{index:04d}": str(index) for index in range(1000)}
        writer.submit(Write(params=dict(params), tags={STATUS: "completed"}), wait=True)
        report = writer.close()
    finally:
        proxy.latency_s = 0
    assert report.given_up == 0 and report.delivered == 1001
    assert log_batches(proxy) == 10
    assert most_log_batches_at_once(proxy) == REQUESTS_AT_ONCE
    data = client.get_run(run_id).data
    assert data.params == params
    assert data.tags[STATUS] == "completed"


def test_writes_queued_behind_a_slow_request_go_out_together_last_tags_winning(
    make_writer, client, proxy, run_id
):
    """Fast nodes with 20 params each, in one process, while the writer waits on the server:
    the writes that queued meanwhile fill requests that go out at once, but for the last
    batch's, which waits for more writes to share its request; a tag that every node sets
    (the latest node) keeps the last node's value."""
    writer = make_writer(proxy, run_id, requests_at_once=REQUESTS_AT_ONCE)
    proxy.slow(1.0, count=1, path_contains="runs/log-batch")
    writer.submit(Write(tags={STATUS: "node 0"}, linger_s=0))
    time.sleep(0.3)  # its request is on the way: the next writes queue behind it
    for node in range(1, 16):
        params = {f"node_{node}.p{i}": str(i) for i in range(20)}
        writer.submit(Write(params=params, tags={STATUS: f"node {node}"}, linger_s=60))
    deadline = time.monotonic() + 30
    while len(client.get_run(run_id).data.params) < 200:
        assert time.monotonic() < deadline, "the queued writes waited for their linger"
        time.sleep(0.05)
    assert client.get_run(run_id).data.tags[STATUS] == "node 10"
    writer.close()
    # the first write; nodes 1-10 (200 params, two requests at once); nodes 11-15 at the end
    assert log_batches(proxy) == 4
    assert most_log_batches_at_once(proxy) == 2
    data = client.get_run(run_id).data
    assert len(data.params) == 300
    assert data.tags[STATUS] == "node 15"


def test_steps_logging_the_same_new_param_at_once_all_deliver(make_writer, client, proxy, run_id):
    """Eight containers log the same new param (a shared ``params:split``) at the same
    moment. The SQL store answers some of them with a duplicate-key error instead of
    accepting the equal value: the writer re-reads the run and drops the equal value
    instead of giving the batch up (which would fail the step)."""
    writers = [make_writer(proxy, run_id, background=False) for _ in range(8)]
    for round_ in range(6):
        key = f"split.seed_{round_}"
        hold = proxy.hold(LOG_BATCH, until=len(writers), timeout_s=60)  # released together
        threads = [
            threading.Thread(
                target=writer.submit,
                args=(Write(params={key: "42"}, tags={f"step_{i}.round": str(round_)}),),
            )
            for i, writer in enumerate(writers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert hold.released == len(writers) and not hold.timed_out
    data = client.get_run(run_id).data
    assert {k: v for k, v in data.params.items()} == {f"split.seed_{r}": "42" for r in range(6)}
    for i, writer in enumerate(writers):
        assert (writer.report.given_up, writer.report.conflicts) == (0, []), writer.report
        assert data.tags[f"step_{i}.round"] == "5"
