"""Generated requests from the app's own OpenAPI schema: client input never gets a 5xx.

schemathesis reads ``/openapi.json`` from a real server, whose request bodies
name the served version's branches so that many generated events reach the
model, and sends cases for every operation, valid and not; each must be
answered below 500.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

CASES_PER_OPERATION = 75


def test_no_generated_request_gets_a_5xx(serve_standin, store, standins):
    served = serve_standin(http={"max_events_per_request": 1000})
    standins.serve_version(served, store, 1, weight=0.5)
    standins.serve_version(served, store, 2, weight=0.1)
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    answered: dict[str, list[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        codes = answered.setdefault(f"{operation.method.upper()} {operation.path}", [])

        @given(case=operation.as_strategy())
        @settings(max_examples=CASES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def call(case):
            response = case.call(timeout=10)
            codes.append(response.status_code)
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text}"

        call()
    total = sum(map(len, answered.values()))
    assert total >= 500, f"only {total} generated requests"
    assert {"POST /v1/models/{name}/predict", "POST /v2/models/{name}/infer", "POST /json"} <= set(answered)
    # Tensors whose shapes and data agree are beyond a JSON schema, so only v1 and TFaaS must reach the model.
    for operation in ("POST /v1/models/{name}/predict", "POST /json"):
        assert 200 in answered[operation], f"no generated request to {operation} reached the model"
