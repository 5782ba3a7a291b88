import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hepstream.config import FeaturesConfig, JaggedFeature
from hepstream.models.features import FeatureError, FeaturePipeline, is_descending


def slow_reference(rows, flat, collections):
    """Per-event Python loop, the way MLaaS4HEP pads: the definition the fast path must equal."""
    out = []
    for row in rows:
        values = [float(row[name]) for name in flat]
        masks = []
        for branches, length, sort_by in collections:
            objects = list(zip(*(row[b] for b in branches)))
            if sort_by is not None:
                key = branches.index(sort_by)
                objects.sort(key=lambda o: -o[key])
            for position, _ in enumerate(branches):
                column = [o[position] for o in objects[:length]]
                values.extend(column + [0.0] * (length - len(column)))
            masks.extend([1.0] * min(length, len(objects)) + [0.0] * max(0, length - len(objects)))
        out.append(values + masks)
    return np.array(out, dtype=np.float32)


number = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@st.composite
def events(draw):
    n = draw(st.integers(0, 12))
    rows = []
    for _ in range(n):
        k = draw(st.integers(0, 6))
        rows.append({
            "MET_pt": draw(number),
            "Muon_pt": draw(st.lists(number, min_size=k, max_size=k)),
            "Muon_eta": draw(st.lists(number, min_size=k, max_size=k)),
            "Jet_pt": draw(st.lists(number, max_size=5)),
        })
    return rows


def _batch(rows):
    if not rows:
        return pa.record_batch({
            "MET_pt": pa.array([], pa.float32()),
            "Muon_pt": pa.array([], pa.list_(pa.float32())),
            "Muon_eta": pa.array([], pa.list_(pa.float32())),
            "Jet_pt": pa.array([], pa.list_(pa.float32())),
        })
    return pa.RecordBatch.from_pylist(rows)


@settings(max_examples=150, deadline=None)
@given(events(), st.integers(1, 5), st.booleans())
def test_padding_equals_per_event_reference(rows, length, sort):
    spec = FeaturesConfig(
        flat=["MET_pt"],
        jagged=[
            JaggedFeature(branches=["Muon_pt", "Muon_eta"], length=length, sort_by="Muon_pt" if sort else None),
            JaggedFeature(branches=["Jet_pt"], length=2),
        ],
        normalize=False,
    )
    pipeline = FeaturePipeline(spec)
    expected = slow_reference(
        rows, ["MET_pt"], [(["Muon_pt", "Muon_eta"], length, "Muon_pt" if sort else None), (["Jet_pt"], 2, None)]
    )
    got = pipeline.transform(_batch(rows))
    assert got.shape == (len(rows), pipeline.n_features)
    if rows:
        np.testing.assert_allclose(got, expected, rtol=1e-6)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), max_size=4), max_size=8))
def test_is_descending_looks_within_events_only(per_event):
    """Empty events first, last or between: a rise across an event boundary is no rise."""
    offsets = np.cumsum([0] + [len(keys) for keys in per_event])
    key = np.array([k for keys in per_event for k in keys], dtype=np.float32)
    expected = all(keys == sorted(keys, reverse=True) for keys in per_event)
    assert is_descending(offsets, key) is expected


def test_sliced_arrow_batches_use_their_own_offsets():
    batch = pa.RecordBatch.from_pylist([{"x": [1.0]}, {"x": [2.0, 3.0]}, {"x": [4.0]}]).slice(1)
    spec = FeaturesConfig(flat=[], jagged=[JaggedFeature(branches=["x"], length=2)], normalize=False)
    assert FeaturePipeline(spec).transform(batch).tolist() == [[2.0, 3.0, 1.0, 1.0], [4.0, 0.0, 1.0, 0.0]]


def test_normalisation_matches_numpy_over_several_batches_and_ignores_padding():
    rng = np.random.default_rng(3)
    spec = FeaturesConfig(flat=["a"], jagged=[JaggedFeature(branches=["x"], length=3)])
    pipeline = FeaturePipeline(spec)
    flat_seen, x_first_slot = [], []
    for _ in range(4):
        n = 500
        counts = rng.integers(0, 4, n)
        xs = rng.normal(50, 7, counts.sum())
        a = rng.normal(-3, 2, n)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        batch = pa.record_batch({"a": a, "x": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(xs))})
        pipeline.learn(pipeline.extract(batch))
        flat_seen.append(a)
        x_first_slot.append(xs[offsets[:-1][counts > 0]])
    flat_seen = np.concatenate(flat_seen)
    first = np.concatenate(x_first_slot)
    assert pipeline.moments.mean[0] == pytest.approx(flat_seen.mean(), rel=1e-6)
    assert pipeline.moments.scale[0] == pytest.approx(flat_seen.std(ddof=1), rel=1e-5)
    assert pipeline.moments.mean[1] == pytest.approx(first.mean(), rel=1e-6)
    assert pipeline.moments.count[1] == len(first)
    out = pipeline.transform(pa.record_batch({"a": [-3.0], "x": pa.array([[]], pa.list_(pa.float64()))}))
    assert out[0, 1:4].tolist() == [0.0, 0.0, 0.0]  # padding stays zero after normalisation
    assert out[0, 4:].tolist() == [0.0, 0.0, 0.0]  # masks


def test_state_roundtrip_reproduces_transform():
    spec = FeaturesConfig(flat=["a"], jagged=[])
    first = FeaturePipeline(spec)
    batch = pa.record_batch({"a": [1.0, 2.0, 6.0]})
    first.learn(first.extract(batch))
    second = FeaturePipeline(spec)
    second.load_state_dict(first.state_dict())
    assert second.transform(batch).tolist() == first.transform(batch).tolist()
    with pytest.raises(ValueError, match="shape"):
        FeaturePipeline(FeaturesConfig(flat=["a", "b"], jagged=[])).load_state_dict(first.state_dict())


@pytest.mark.parametrize(
    "batch, branch, message",
    [
        (pa.record_batch({"x": [[1.0]]}), "a", "missing"),
        (pa.record_batch({"a": [[1.0]], "x": [[1.0]]}), "a", "one number per event"),
        (pa.record_batch({"a": [1.0], "x": [2.0]}), "x", "list of numbers"),
        (pa.record_batch({"a": [1.0], "x": [["s"]]}), "x", "numbers inside the list"),
        (pa.record_batch({"a": [float("nan")], "x": [[1.0]]}), "a", "NaN"),
        (pa.record_batch({"a": [1.0], "x": [[1.0, float("inf")]]}), "x", "NaN or infinite"),
    ],
)
def test_bad_input_names_the_branch(batch, branch, message):
    spec = FeaturesConfig(flat=["a"], jagged=[JaggedFeature(branches=["x"], length=2)])
    with pytest.raises(FeatureError, match=message) as caught:
        FeaturePipeline(spec).transform(batch)
    assert caught.value.branch == branch


def test_collection_branches_must_agree_on_counts():
    spec = FeaturesConfig(flat=[], jagged=[JaggedFeature(branches=["p", "q"], length=2)])
    batch = pa.record_batch({"p": [[1.0, 2.0]], "q": [[1.0]]})
    with pytest.raises(FeatureError, match="object counts differ") as caught:
        FeaturePipeline(spec).transform(batch)
    assert caught.value.branch == "q"


def test_derived_branches_feed_flat_features_and_collections():
    from hepstream.config import DerivedFeature

    spec = FeaturesConfig(
        flat=["HT", "n_central"],
        jagged=[JaggedFeature(branches=["Jet_pt", "Jet_px"], length=2, sort_by="Jet_pt")],
        derived=[DerivedFeature(name="HT", expr="sum(Jet_pt)"),
                 DerivedFeature(name="n_central", expr="count(Jet_pt) - sum(abs(Jet_eta) > 2.5)"),
                 DerivedFeature(name="Jet_px", expr="Jet_pt * cos(Jet_phi)")],
        normalize=False,
    )
    assert spec.branches == ["Jet_pt", "Jet_eta", "Jet_phi"]  # what the producer reads
    batch = pa.RecordBatch.from_pylist([
        {"Jet_pt": [10.0, 30.0, 20.0], "Jet_eta": [0.0, 3.0, 1.0], "Jet_phi": [0.0, 0.0, np.pi]},
        {"Jet_pt": [], "Jet_eta": [], "Jet_phi": []},
    ])
    pipeline = FeaturePipeline(spec)
    got = pipeline.transform(batch)
    np.testing.assert_allclose(got, [[60.0, 2.0, 30.0, 20.0, 30.0, -20.0, 1.0, 1.0], [0.0] * 8], atol=1e-5)
    assert {b.name: b.jagged for b in pipeline.inputs} == {"Jet_pt": True, "Jet_eta": True, "Jet_phi": True}


@pytest.mark.parametrize("expr", ["__import__(MET_pt)", "open('x')", "Jet_pt.real"])
def test_unsafe_derived_expressions_are_refused_with_the_config(expr):
    from pydantic import ValidationError

    from hepstream.config import DerivedFeature

    with pytest.raises(ValidationError, match="is not allowed|unknown function"):
        DerivedFeature(name="x", expr=expr)


@pytest.mark.parametrize("expr, message", [("sum(MET_pt)", "needs a jagged"), ("MET_pt + nope", "missing")])
def test_bad_derived_expressions_name_the_derived_branch(expr, message):
    from hepstream.config import DerivedFeature

    spec = FeaturesConfig(flat=["x"], jagged=[], derived=[DerivedFeature(name="x", expr=expr)])
    with pytest.raises(FeatureError, match=message) as caught:
        FeaturePipeline(spec).transform(pa.record_batch({"MET_pt": [1.0], "Jet_pt": [[1.0]]}))
    assert caught.value.branch in ("x", "nope")


def test_deep_sets_ignores_padding_and_object_order():
    import torch

    from hepstream.config import TrainingConfig
    from hepstream.model_kinds import DeepSetsConfig
    from hepstream.models.registry import build_estimator

    spec = FeaturesConfig(flat=["MET_pt"], jagged=[JaggedFeature(branches=["Muon_pt", "Muon_eta"], length=3)])
    pipeline = FeaturePipeline(spec)
    model = build_estimator(DeepSetsConfig(), pipeline, TrainingConfig(device="cpu")).module
    x = torch.tensor([[1.0, 5.0, 6.0, 9.0, 0.1, 0.2, 7.0, 1.0, 1.0, 0.0]])  # two muons; slot 3 is padding
    swapped = torch.tensor([[1.0, 6.0, 5.0, 0.0, 0.2, 0.1, 0.0, 1.0, 1.0, 0.0]])  # order swapped, padding zeroed
    torch.testing.assert_close(model(x), model(swapped))
