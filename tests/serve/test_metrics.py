"""Prometheus /metrics: requests and errors by code, latency, batch sizes, version and swaps per replica."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families


def samples(url):
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_what_happened(serve_standin, store, standins):
    served = serve_standin(replica="replica-a")
    standins.serve_version(served, store, 1)
    standins.serve_version(served, store, 2)
    predict = f"{served.url}/v1/models/demo/predict"
    for _ in range(3):
        requests.post(predict, json={"events": [{"MET_pt": 1.0, "Muon_pt": []}] * 4}, timeout=10)
    requests.post(predict, json={"events": [{"MET_pt": "x", "Muon_pt": []}]}, timeout=10)
    requests.post(f"{served.url}/v1/models/nope/predict", json={"events": []}, timeout=10)
    found = samples(served.url)
    route = "/v1/models/{name}/predict"
    assert found[("hepstream_requests_total", (("code", "200"), ("method", "POST"), ("route", route)))] == 3
    assert found[("hepstream_requests_total", (("code", "422"), ("method", "POST"), ("route", route)))] == 1
    assert found[("hepstream_requests_total", (("code", "404"), ("method", "POST"), ("route", route)))] == 1
    assert found[("hepstream_request_duration_seconds_count", (("route", route),))] == 5
    assert found[("hepstream_batch_events_sum", ())] == 12
    assert found[("hepstream_batch_requests_count", ())] == 3
    replica = (("model", "demo"), ("replica", "replica-a"))
    assert found[("hepstream_model_version", replica)] == 2
    assert found[("hepstream_model_swaps_total", replica)] == 2
    assert found[("hepstream_model_load_failures_total", replica)] == 0
