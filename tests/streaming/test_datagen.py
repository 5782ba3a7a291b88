"""Toy NanoAOD generator: format, physics and learnability contracts."""

import awkward as ak
import numpy as np
import pytest
import uproot

from hepstream.streaming import datagen

SCALAR, JAGGED = "AsDtype('>{}')", "AsJagged(AsDtype('>{}'))"
BRANCHES = {  # NanoAOD names, in NanoAOD order, with their on-disk types
    "run": SCALAR.format("u4"), "luminosityBlock": SCALAR.format("u4"), "event": SCALAR.format("u8"),
    "nMuon": SCALAR.format("i4"), **{f"Muon_{f}": JAGGED.format("f4") for f in ("pt", "eta", "phi", "mass")},
    "Muon_charge": JAGGED.format("i4"),
    "nJet": SCALAR.format("i4"), **{f"Jet_{f}": JAGGED.format("f4") for f in ("pt", "eta", "phi", "btag")},
    "MET_pt": SCALAR.format("f4"), "MET_phi": SCALAR.format("f4"),
}


def read(path):
    return uproot.open(path)["Events"].arrays()


def m4l(events):
    """Invariant mass of the four leading muons of events with at least four."""
    mu = events[events.nMuon >= 4]
    pt, eta, phi = mu.Muon_pt[:, :4], mu.Muon_eta[:, :4], mu.Muon_phi[:, :4]
    e = ak.sum(np.sqrt((pt * np.cosh(eta)) ** 2 + datagen.MMU**2), axis=1)
    px, py, pz = (ak.sum(pt * f, axis=1) for f in (np.cos(phi), np.sin(phi), np.sinh(eta)))
    return ak.to_numpy(np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0)))


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    return {p: read(datagen.generate_file(out / f"{p}.root", p, 20_000, seed=11)) for p in datagen.PROCESSES}


def test_branch_names_types_and_counters(tmp_path):
    tree = uproot.open(datagen.generate_file(tmp_path / "s.root", "signal", 500))["Events"]
    assert {k: str(tree[k].interpretation) for k in tree.keys()} == BRANCHES
    assert tree.keys() == list(BRANCHES)
    assert tree["Muon_pt"].count_branch.name == "nMuon" and tree["Jet_pt"].count_branch.name == "nJet"
    events = tree.arrays()
    assert ak.all(events.nMuon == ak.num(events.Muon_pt))
    assert ak.all(events.nJet == ak.num(events.Jet_btag))


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a, b, c = (read(datagen.generate_file(tmp_path / f"{k}.root", "background", 3000, seed=s))
               for k, s in (("a", 5), ("b", 5), ("c", 6)))
    assert all(ak.array_equal(a[f], b[f]) for f in a.fields)
    assert not ak.array_equal(a.Muon_pt, c.Muon_pt)
    assert not ak.array_equal(a.MET_pt, c.MET_pt)


def test_blocks_and_threads_do_not_change_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(datagen, "_BLOCK", 700)  # several blocks, generated in parallel
    monkeypatch.setattr(datagen, "_WORKERS", 3)
    parallel = read(datagen.generate_file(tmp_path / "p.root", "background", 5000, seed=2))
    monkeypatch.setattr(datagen, "_WORKERS", 1)
    serial = read(datagen.generate_file(tmp_path / "s.root", "background", 5000, seed=2))
    assert all(ak.array_equal(parallel[f], serial[f]) for f in parallel.fields)
    assert np.array_equal(ak.to_numpy(parallel.event), np.arange(1, 5001))  # unique, in order across blocks
    assert np.array_equal(ak.to_numpy(parallel.luminosityBlock), np.arange(5000) // 1000 + 1)


@pytest.mark.parametrize("process", datagen.PROCESSES)
def test_objects_sorted_and_inside_acceptance(samples, process):
    ev = samples[process]
    assert ak.all(ev.Muon_pt[:, :-1] >= ev.Muon_pt[:, 1:])
    assert ak.all(ev.Jet_pt[:, :-1] >= ev.Jet_pt[:, 1:])
    assert ak.min(ev.Muon_pt) > 5 and ak.max(abs(ev.Muon_eta)) < 2.4
    assert ak.min(ev.Jet_pt) > 20 and ak.max(abs(ev.Jet_eta)) < 4.7
    assert 0 <= ak.min(ev.Jet_btag) and ak.max(ev.Jet_btag) <= 1
    assert set(np.unique(ak.flatten(ev.Muon_charge))) == {-1, 1}
    for phi in (ak.flatten(ev.Muon_phi), ak.flatten(ev.Jet_phi), ev.MET_phi):
        assert ak.max(abs(phi)) <= np.pi + 1e-6
    assert np.isfinite(ak.to_numpy(ev.MET_pt)).all() and ak.min(ev.MET_pt) >= 0


def test_signal_muon_multiplicity_is_mostly_four_but_not_always(samples):
    frac = np.bincount(ak.to_numpy(samples["signal"].nMuon), minlength=5) / len(samples["signal"])
    assert 0.3 < frac[4] < 0.7
    assert frac[3] > 0.15 and frac[2] > 0.05


def test_signal_m4l_peaks_at_the_higgs_mass_and_background_does_not(samples):
    sig, bkg = m4l(samples["signal"]), m4l(samples["background"])
    assert 120 < np.median(sig) < 130
    assert np.mean(abs(sig - 125) < 5) > 0.9  # a narrow peak: resolution of ~1%
    assert np.median(bkg) > 180  # ZZ continuum above the pair threshold
    assert 0.01 < np.mean(abs(bkg - 125) < 5) < 0.1  # with a low tail: not trivially separable
    four = samples["signal"][samples["signal"].nMuon == 4]
    assert ak.all(ak.sum(four.Muon_charge, axis=1) == 0)  # two opposite-sign pairs


def test_drell_yan_background_has_more_met_and_b_jets(samples):
    sig, bkg = samples["signal"], samples["background"]
    assert np.mean(bkg.MET_pt) > np.mean(sig.MET_pt)
    assert ak.mean(ak.any(bkg.Jet_btag > 0.8, axis=1)) > 2 * ak.mean(ak.any(sig.Jet_btag > 0.8, axis=1))


@pytest.mark.parametrize(
    "kwargs, name",
    [({"process": "ttbar"}, "process"), ({"events": 0}, "events"), ({"events": -3}, "events"),
     ({"events": 2.5}, "events"), ({"seed": -1}, "seed")],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, name):
    args = {"path": tmp_path / "x.root", "process": "signal", "events": 10} | kwargs
    with pytest.raises(ValueError, match=f"^{name} "):
        datagen.generate_file(**args)
    assert not (tmp_path / "x.root").exists()


@pytest.mark.parametrize("bad", ["events_per_class", "holdout_per_class"])
def test_bad_demo_sizes_name_the_argument(tmp_path, bad):
    sizes = {"events_per_class": 10, "holdout_per_class": 10} | {bad: 0}
    with pytest.raises(ValueError, match=f"^{bad} "):
        datagen.generate_demo(tmp_path, **sizes)


def test_demo_files_labels_and_independent_holdout(tmp_path):
    demo = datagen.generate_demo(tmp_path / "demo", 800, 300, seed=4)
    assert [(p.name, y) for p, y in demo.train] == [("signal.root", 1), ("background.root", 0)]
    assert [(p.name, y) for p, y in demo.holdout] == [("holdout_signal.root", 1), ("holdout_background.root", 0)]
    assert [uproot.open(p)["Events"].num_entries for p, _ in demo.train + demo.holdout] == [800, 800, 300, 300]
    train, hold = read(demo.train[0][0]), read(demo.holdout[0][0])
    assert not ak.array_equal(train.Muon_pt[:300], hold.Muon_pt)
    again = datagen.generate_demo(tmp_path / "again", 800, 300, seed=4)
    assert ak.array_equal(read(again.holdout[1][0]).Muon_pt, read(demo.holdout[1][0]).Muon_pt)


def padded_features(events):
    """First 4 muons (pt, eta, phi, mass) and jets (pt, eta, btag), zero-padded, slot masks, MET, counts."""
    cols = []
    for coll, fields in (("Muon", ("pt", "eta", "phi", "mass")), ("Jet", ("pt", "eta", "btag"))):
        for f in fields:
            cols.append(ak.to_numpy(ak.fill_none(ak.pad_none(events[f"{coll}_{f}"], 4, clip=True), 0)))
        cols.append(ak.to_numpy(ak.num(events[f"{coll}_pt"]))[:, None] > np.arange(4))
    cols += [ak.to_numpy(events[k])[:, None] for k in ("MET_pt", "nMuon", "nJet")]
    return np.concatenate([c.astype(np.float32) for c in cols], axis=1)


def auc(y, score):
    from scipy.stats import rankdata

    r = rankdata(score)
    pos = y.sum()
    return (r[y == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos))


def train_mlp(x, y, hidden=32, epochs=3, batch=256, lr=3e-3, seed=0):
    """One ReLU hidden layer, logistic loss, Adam; numpy only, so this test needs no torch."""
    rng = np.random.default_rng(seed)
    params = [rng.normal(0, np.sqrt(2 / x.shape[1]), (x.shape[1], hidden)), np.zeros(hidden),
              rng.normal(0, np.sqrt(1 / hidden), hidden), np.zeros(1)]
    moments = [[np.zeros_like(p), np.zeros_like(p)] for p in params]
    for step, i in enumerate(list(range(0, len(x), batch)) * epochs, start=1):
        xb, yb = x[i:i + batch], y[i:i + batch]
        w1, b1, w2, b2 = params
        h = np.maximum(xb @ w1 + b1, 0)
        dlogit = (1 / (1 + np.exp(-(h @ w2 + b2))) - yb) / len(xb)
        dh = np.outer(dlogit, w2) * (h > 0)
        for p, g, m in zip(params, [xb.T @ dh, dh.sum(0), h.T @ dlogit, dlogit.sum(keepdims=True)], moments):
            m[0], m[1] = 0.9 * m[0] + 0.1 * g, 0.999 * m[1] + 0.001 * g * g
            p -= lr * m[0] / (1 - 0.9**step) / (np.sqrt(m[1] / (1 - 0.999**step)) + 1e-8)
    w1, b1, w2, b2 = params
    return lambda x: np.maximum(x @ w1 + b1, 0) @ w2 + b2


def test_small_mlp_learns_it_well_but_not_trivially(tmp_path):
    demo = datagen.generate_demo(tmp_path, 15_000, 5_000, seed=1)

    def load(files):
        xs = [padded_features(read(p)) for p, _ in files]
        return np.concatenate(xs), np.concatenate([np.full(len(x), y) for x, (_, y) in zip(xs, files)])

    (x, y), (xh, yh) = load(demo.train), load(demo.holdout)
    mean, std = x.mean(0), x.std(0) + 1e-6
    perm = np.random.default_rng(0).permutation(len(x))
    model = train_mlp((x[perm] - mean) / std, y[perm])
    assert 0.80 < auc(yh, model((xh - mean) / std)) < 0.99
