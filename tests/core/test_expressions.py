import awkward as ak
import numpy as np
import pytest

from hepstream.expressions import Expression, ExpressionError

EVENTS = {
    "Muon_pt": ak.Array([[30.0, 10.0], [], [50.0, 40.0, 5.0]]),
    "MET_pt": ak.Array([20.0, 5.0, 40.0]),
    "nMuon": ak.Array(np.array([2, 0, 3], dtype=np.int32)),
}


@pytest.mark.parametrize("text, expected", [
    ("nMuon**2", [4, 0, 9]),
    ("log(MET_pt / 5)", list(np.log([4.0, 1.0, 8.0]))),
    ("sum(Muon_pt) - MET_pt", [20.0, -5.0, 55.0]),
    ("max(Muon_pt)", [30.0, np.nan, 50.0]),
    ("num(Muon_pt)", [2, 0, 3]),
    ("count(Muon_pt > 20)", [1, 0, 2]),
    ("where(MET_pt > 10, MET_pt, 0)", [20.0, 0.0, 40.0]),
    ("Muon_pt / MET_pt", [[1.5, 0.5], [], [1.25, 1.0, 0.125]]),
])
def test_definitions_are_vectorised(text, expected):
    np.testing.assert_equal(ak.to_list(Expression.parse(text).evaluate(EVENTS)), expected)  # NaN equals NaN


@pytest.mark.parametrize("text, expected", [
    ("1 <= nMuon <= 2", [True, False, False]),
    ("any(Muon_pt > 45)", [False, False, True]),
    ("all(Muon_pt > 8)", [True, True, False]),  # all() of no muons is true
    ("not MET_pt > 10 or nMuon == 3", [False, True, True]),
])
def test_cuts_on_flat_and_jagged_branches(text, expected):
    assert Expression.parse(text).cut(EVENTS).tolist() == expected


@pytest.mark.parametrize("text, message", [
    ("__import__('os').system('true')", "unknown function"),
    ("MET_pt.__class__", "Attribute"),
    ("Muon_pt[0]", "Subscript"),
    ("(lambda: 1)()", "unknown function"),
    ("'a' * 3", "only numbers"),
    ("MET_pt >", "not valid syntax"),
    ("MET_pt in Muon_pt", "operator In"),
    ("sum(x=Muon_pt)", "positional"),
])
def test_anything_beyond_the_whitelist_is_refused_at_parse_time(text, message):
    with pytest.raises(ExpressionError, match=message) as caught:
        Expression.parse(text)
    assert text in str(caught.value)


@pytest.mark.parametrize("text, message", [
    ("Muon_pt > 20", r"per object, not per event: wrap it in any\(...\) or all\(...\)"),
    ("MET_pt + 1", "not true/false"),
    ("sum(MET_pt) > 1", "needs a jagged"),
    ("Muon_ptt > 1", r"unknown branch\(es\) \['Muon_ptt'\]"),
])
def test_cuts_that_cannot_select_events_say_why(text, message):
    with pytest.raises(ExpressionError, match=message):
        Expression.parse(text).cut(EVENTS)
