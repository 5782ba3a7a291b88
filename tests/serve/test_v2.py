"""The Open Inference Protocol, spoken by the real tritonclient.http client from PyPI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

MET = np.array([41.2, 7.0, 120.5])
MUONS = np.array([[51.0, 33.2], [np.nan, np.nan], [12.25, np.nan]])  # jagged: padded with NaN


@pytest.fixture
def served(serve_standin, store, standins):
    served = serve_standin()
    standins.serve_version(served, store, 1, weight=0.5)
    return served


@pytest.fixture
def client(served):
    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    yield client
    client.close()


def tensors(met=MET, muons=MUONS, binary=True, met_type="FP64"):
    met_input = triton.InferInput("MET_pt", list(met.shape), met_type)
    met_input.set_data_from_numpy(met.astype(triton.triton_to_np_dtype(met_type)), binary_data=binary)
    muon_input = triton.InferInput("Muon_pt", list(muons.shape), "FP32")
    muon_input.set_data_from_numpy(muons.astype(np.float32), binary_data=binary)
    return [met_input, muon_input]


def expected(standins, weight):
    muons = [[m for m in row if not np.isnan(m)] for row in MUONS.astype(np.float32).tolist()]
    return np.array([standins.score_of(met, mu, weight) for met, mu in zip(MET, muons)], dtype=np.float32)


def test_health_metadata_and_readiness(client, served):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("demo") and client.is_model_ready("demo", "1")
    assert not client.is_model_ready("other")
    metadata = client.get_model_metadata("demo")
    assert metadata["inputs"] == [{"name": "MET_pt", "datatype": "FP64", "shape": [-1]},
                                  {"name": "Muon_pt", "datatype": "FP64", "shape": [-1, -1]}]
    assert metadata["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1]}]
    assert client.get_server_metadata()["name"] == "hepstream"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_round_trip(client, standins, binary):
    outputs = [triton.InferRequestedOutput("score", binary_data=binary)]
    result = client.infer("demo", tensors(binary=binary), outputs=outputs, request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("score"), expected(standins, 0.5))
    response = result.get_response()
    assert (response["model_version"], response["id"]) == ("1", "r1")
    # No outputs named: tritonclient asks for binary ones.
    np.testing.assert_array_equal(client.infer("demo", tensors()).as_numpy("score"), expected(standins, 0.5))


def test_a_pinned_version_answers_under_its_path(client, served, store, standins):
    standins.serve_version(served, store, 2, weight=-1.0)
    assert client.infer("demo", tensors()).get_response()["model_version"] == "2"
    pinned = client.infer("demo", tensors(), model_version="1")
    assert pinned.get_response()["model_version"] == "1"
    np.testing.assert_array_equal(pinned.as_numpy("score"), expected(standins, 0.5))


@pytest.mark.parametrize("inputs, words", [
    (lambda: tensors(met=np.array([1.0, np.nan, 2.0])), "inputs.MET_pt"),
    (lambda: tensors(muons=np.array([[np.nan, 1.0], [1.0, 2.0], [1.0, 1.0]])), "inputs.Muon_pt"),
    (lambda: tensors(met=np.ones((3, 2))), "inputs.MET_pt"),
    (lambda: tensors(muons=np.ones(3)), "inputs.Muon_pt"),
    (lambda: tensors(met=np.ones(2)), "number of events"),
    (lambda: tensors()[:1], "missing input 'Muon_pt'"),
    (lambda: tensors() + [_tensor("Jet_pt")], "unknown input 'Jet_pt'"),
])
def test_bad_tensors_are_400_naming_the_input(client, inputs, words):
    with pytest.raises(InferenceServerException) as caught:
        client.infer("demo", inputs())
    assert caught.value.status() == "400" and words in caught.value.message()


def _tensor(name):
    tensor = triton.InferInput(name, [3], "FP64")
    tensor.set_data_from_numpy(np.ones(3))
    return tensor


def test_unknown_model_is_404(client):
    with pytest.raises(InferenceServerException) as caught:
        client.infer("other", tensors())
    assert caught.value.status() == "404"


@pytest.mark.parametrize("body, field", [
    ({"inputs": [{"name": "MET_pt", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, "inputs.MET_pt"),
    ({"inputs": [{"name": "MET_pt", "shape": [2], "datatype": "FP64", "data": [1.0]}]}, "inputs.MET_pt"),
    ({"inputs": [{"name": "MET_pt", "shape": [1], "datatype": "FP64", "data": ["x"]}]}, "inputs.MET_pt[0]"),
    ({"inputs": [{"name": "MET_pt", "shape": [1], "datatype": ["FP64"], "data": [1]}]}, "inputs.MET_pt"),
    ({"inputs": [{"name": "MET_pt", "shape": [2], "datatype": "FP64", "data": [[1.0], [2.0]]}]}, "inputs.MET_pt"),
    ({"inputs": [{"name": "Muon_pt", "shape": [2, 2], "datatype": "FP64", "data": [[1.0, 2.0], [3.0]]}]},
     "inputs.Muon_pt"),
    ({"inputs": {}}, "inputs"),
    ({"inputs": [], "outputs": [{"name": "probability"}]}, "outputs[0]"),
])
def test_malformed_json_requests_are_400_naming_the_field(served, body, field):
    answer = requests.post(f"{served.url}/v2/models/demo/infer", json=body, timeout=10)
    assert (answer.status_code, answer.json()["field"]) == (400, field), answer.text


def infer_json(served, met, met_type="FP64", muons=((1.0,), (2.0,)), muon_type="FP64"):
    body = {"inputs": [{"name": "MET_pt", "shape": [len(met)], "datatype": met_type, "data": list(met)},
                       {"name": "Muon_pt", "shape": [len(muons), len(muons[0])], "datatype": muon_type,
                        "data": [list(row) for row in muons]}]}
    # Python's json writes NaN and Infinity, which the server reads (strict JSON has neither).
    return requests.post(f"{served.url}/v2/models/demo/infer", data=json.dumps(body), timeout=10)


@pytest.mark.parametrize("met, met_type, muons, muon_type, field, words", [
    ([1, 1000], "INT8", ((1.0,), (2.0,)), "FP64", "inputs.MET_pt[1]",
     "1000 is out of range for INT8, which holds integers from -128 to 127"),
    ([-1, 2], "UINT16", ((1.0,), (2.0,)), "FP64", "inputs.MET_pt[0]", "-1 is out of range for UINT16"),
    ([1, 1.5], "INT32", ((1.0,), (2.0,)), "FP64", "inputs.MET_pt[1]", "1.5 is not INT32"),
    ([True, 2], "BOOL", ((1.0,), (2.0,)), "FP64", "inputs.MET_pt[1]", "2 is not BOOL"),
    ([1.0, 70000.0], "FP16", ((1.0,), (2.0,)), "FP64", "inputs.MET_pt[1]", "70000.0 is too large for FP16"),
    ([1.0, 1e308], "FP64", ((1.0,), (2.0,)), "FP64", "inputs.MET_pt[1]", "1e+308 is too large for float32"),
    ([1.0, 2.0], "FP64", ((1.0, float("nan")), (2.0, -1e39)), "FP64", "inputs.Muon_pt[1][1]",
     "-1e+39 is too large for float32"),
    ([1, 2], "INT32", ((1, float("nan")), (2, 3)), "INT32", "inputs.Muon_pt[0][1]",
     "NaN is not INT32, which holds integers from -2147483648 to 2147483647; pad a jagged branch with NaN"),
    ([1.0, float("inf")], "FP64", ((1.0,), (2.0,)), "FP64", "inputs.MET_pt[1]",
     "Infinity is not accepted; values must be finite numbers"),
], ids=["int8-range", "uint16-negative", "int32-fraction", "bool-number", "fp16-range", "fp64-beyond-float32",
        "jagged-beyond-float32", "nan-padding-in-int", "infinity"])
def test_values_their_type_cannot_hold_are_400_naming_input_index_value_and_type(served, met, met_type, muons,
                                                                                 muon_type, field, words):
    answer = infer_json(served, met, met_type, muons, muon_type)
    assert (answer.status_code, answer.json()["field"]) == (400, field), answer.text
    assert answer.json()["error"].startswith(f"{field}: ") and words in answer.json()["error"], answer.text


def test_bool_and_every_integer_type_at_its_edges_are_scored(served, standins):
    answer = infer_json(served, [True, False], "BOOL", ((127,), (-128,)), "INT8")
    assert answer.status_code == 200, answer.text
    scores = answer.json()["outputs"][0]["data"]
    assert scores == [float(standins.score_of(1.0, [127.0], 0.5)), float(standins.score_of(0.0, [-128.0], 0.5))]
    for name, largest in [("UINT64", 2**64 - 1), ("INT64", 2**63 - 1), ("UINT32", 2**32 - 1), ("INT16", 2**15 - 1)]:
        assert infer_json(served, [0, largest], name).status_code == 200, name


def test_binary_data_beyond_float32_or_not_bool_is_400(client):
    with pytest.raises(InferenceServerException) as caught:
        client.infer("demo", tensors(met=np.array([1.0, 2.0, 1e300])))
    assert caught.value.status() == "400"
    assert "inputs.MET_pt[2]: 1e+300 is too large for float32" in caught.value.message()
    flags = triton.InferInput("MET_pt", [3], "BOOL")
    flags.set_data_from_numpy(np.array([True, False, True]))
    flags._raw_data = b"\x01\x00\x07"  # what a client with a bad encoder might send
    with pytest.raises(InferenceServerException) as caught:
        client.infer("demo", [flags, tensors()[1]])
    assert caught.value.status() == "400" and "inputs.MET_pt[2]: 7 is not BOOL" in caught.value.message()
