"""Schemathesis against the served OpenAPI spec: generated requests to every operation (bounded: a few
examples each, a fixed seed) never get a server error."""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("fastapi", reason="the web stack is an optional extra: pip install 'assay[server]'")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, seed, settings
from test_server_api import make_workspace

from assay.loop import Miner
from assay.server.app import ServerConfig, create_app

EXAMPLES = 12


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("schema"), n_red=4, n_other=16)
    ws.catalog.add_concept("red", text="red")
    Miner(ws, "red").propose(strategy="seals:entropy", batch=5, seed=0)
    application = create_app(ws, ServerConfig(batch=5, check_host=False))  # the generated requests use Host: testserver
    yield application
    application.state.proposer.close()
    ws.close()


def test_no_server_errors_on_generated_requests(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 15
    failures: list[str] = []
    statuses: list[int] = []
    for op in operations:
        turn = itertools.count()

        @seed(1234)
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case):
            # Every other case names the real concept, so the deeper code paths are reached too.
            if case.path_parameters and "name" in case.path_parameters and next(turn) % 2 == 0:  # noqa: B023 - run() is called in this iteration
                case.path_parameters["name"] = "red"
            response = case.call()
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")

        run()
    assert len(statuses) >= 3 * len(operations)  # the run really sent requests
    assert any(200 <= s < 300 for s in statuses) and any(400 <= s < 500 for s in statuses)
    assert not failures, "\n".join(failures[:10])
