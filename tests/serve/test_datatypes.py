"""Each datatype's range, both sides and one past them, its kind of value, and float32 for the model's features."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from hepstream.serve import datatypes
from hepstream.serve.datatypes import DATATYPES, FEATURES, check_features
from hepstream.serve.errors import RequestError

INTEGERS = [(name, int(np.iinfo(datatype.dtype).min), int(np.iinfo(datatype.dtype).max))
            for name, datatype in DATATYPES.items() if datatype.dtype.kind in "iu"]
# The smallest double each floating type rounds to an infinity: halfway between its largest value and the next
# power of two (ties round to the even infinity).
OVERFLOW = {"FP16": 65520.0, "FP32": 2.0**128 - 2.0**103}


def at(index: int) -> str:
    return f"inputs.x[{index}]"


def refusal(datatype: str, values: list, status: int = 400) -> RequestError:
    with pytest.raises(RequestError) as caught:
        DATATYPES[datatype].from_json(values, at, status)
    return caught.value


def test_the_datatypes_are_the_protocols_numeric_ones():
    assert list(DATATYPES) == ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
                               "FP16", "FP32", "FP64"]


@pytest.mark.parametrize("name, low, high", INTEGERS, ids=[name for name, *_ in INTEGERS])
def test_integers_take_their_whole_range_exactly(name, low, high):
    values = DATATYPES[name].from_json([low, high, 0], at, 400)
    assert values.tolist() == [float(low), float(high), 0.0]


@pytest.mark.parametrize("name, low, high", INTEGERS, ids=[name for name, *_ in INTEGERS])
@pytest.mark.parametrize("side", ["below", "above"])
def test_one_past_either_end_of_an_integer_range_is_refused(name, low, high, side):
    value = low - 1 if side == "below" else high + 1
    error = refusal(name, [0, value], status=422)
    assert (error.status, error.field) == (422, "inputs.x[1]")
    assert error.message == (f"inputs.x[1]: {value} is out of range for {name}, "
                             f"which holds integers from {low} to {high}")


@pytest.mark.parametrize("value, words", [
    (1.5, "1.5 is not INT32"),
    (2.0, "2.0 is not INT32"),
    (True, "true is not INT32"),
    ("3", '"3" is not INT32'),
    ([3], "[3] is not INT32"),
    (float("nan"), "pad a jagged branch with NaN in a floating datatype"),
])
def test_an_integer_datatype_takes_json_integers_only(value, words):
    error = refusal("INT32", [1, value])
    assert error.field == "inputs.x[1]" and words in error.message and "integers from" in error.message


@pytest.mark.parametrize("value", [1, 0, 1.0, None, "true"])
def test_bool_takes_true_and_false_only(value):
    assert DATATYPES["BOOL"].from_json([True, False], at, 400).tolist() == [1.0, 0.0]
    error = refusal("BOOL", [False, value])
    assert error.field == "inputs.x[1]" and "is not BOOL, which holds true or false" in error.message


def test_binary_bool_is_a_byte_0_or_1():
    assert DATATYPES["BOOL"].from_bytes(b"\x00\x01", at, 400).tolist() == [0.0, 1.0]
    with pytest.raises(RequestError) as caught:
        DATATYPES["BOOL"].from_bytes(b"\x00\x01\x02", at, 400)
    assert caught.value.field == "inputs.x[2]" and "2 is not BOOL" in caught.value.message


@pytest.mark.parametrize("name, low, high", INTEGERS, ids=[name for name, *_ in INTEGERS])
def test_binary_integers_keep_their_values(name, low, high):
    raw = np.array([low, high], dtype=DATATYPES[name].dtype).tobytes()
    assert DATATYPES[name].from_bytes(raw, at, 400).tolist() == [float(low), float(high)]


@pytest.mark.parametrize("name", OVERFLOW)
@pytest.mark.parametrize("sign", [1, -1])
def test_a_floating_type_refuses_from_the_first_double_it_rounds_to_infinity(name, sign):
    largest = float(np.finfo(DATATYPES[name].dtype).max)
    edge = float(np.nextafter(OVERFLOW[name], 0))  # the last double that still rounds to the largest value
    assert DATATYPES[name].from_json([sign * largest, sign * edge], at, 400).tolist() == [sign * largest, sign * edge]
    error = refusal(name, [1.0, sign * OVERFLOW[name]])
    assert error.field == "inputs.x[1]"
    assert f"is too large for {name}, which holds numbers up to ±{largest:.8g}" in error.message


def test_fp64_takes_every_finite_double_and_refuses_integers_beyond():
    largest = float(np.finfo(np.float64).max)
    assert DATATYPES["FP64"].from_json([largest, -largest, 7], at, 400).tolist() == [largest, -largest, 7.0]
    error = refusal("FP64", [1.0, 10**400])
    assert error.field == "inputs.x[1]" and "is too large for FP64" in error.message
    assert "(401 characters)" in error.message  # the value is shown cut, not with all its digits


@pytest.mark.parametrize("value, words", [(True, "true is not FP32"), ("1.0", '"1.0" is not FP32')])
def test_a_floating_type_takes_json_numbers_only(value, words):
    assert words in refusal("FP32", [1.0, value]).message


def test_null_is_the_padding_of_a_floating_tensor_in_strict_json():
    assert np.isnan(DATATYPES["FP32"].from_json([1.0, None], at, 400)[1])
    assert "null is not INT32" in refusal("INT32", [1, None]).message


def test_nan_and_infinities_are_left_to_the_finiteness_check():
    values = DATATYPES["FP16"].from_json([float("nan"), float("inf"), -float("inf")], at, 400)
    assert np.isnan(values[0]) and values[1:].tolist() == [float("inf"), -float("inf")]


@pytest.mark.parametrize("value, words", [
    (float("nan"), "NaN is not accepted; values must be finite numbers"),
    (-float("inf"), "-Infinity is not accepted; values must be finite numbers"),
    (1e308, "1e+308 is too large for float32, which holds numbers up to ±3.4028235e+38 "
            "(the type of the model's features)"),
    (-OVERFLOW["FP32"], "is too large for float32"),
])
def test_features_refuse_what_float32_cannot_hold_each_with_its_own_message(value, words):
    with pytest.raises(RequestError) as caught:
        check_features(np.array([1.0, value]), lambda event: f"events[{event}].MET_pt", 422)
    assert (caught.value.status, caught.value.field) == (422, "events[1].MET_pt")
    assert caught.value.message.startswith("events[1].MET_pt: ") and words in caught.value.message


def test_features_take_float32s_whole_range():
    largest = float(np.finfo(np.float32).max)
    check_features(np.array([largest, -np.nextafter(OVERFLOW["FP32"], 0), 1e-50, 0.0]), at, 422)
    assert FEATURES.from_json([2**63 + 5, -largest], at, 422).tolist() == [float(2**63), -largest]


def test_doctest_examples_run():
    assert doctest.testmod(datatypes).attempted >= 2 and doctest.testmod(datatypes).failed == 0
