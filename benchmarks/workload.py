"""The training benchmarks' workload: NanoAOD-like events, their 80 features, and their in-memory ceiling.

``hepstream bench train`` and ``hepstream bench core`` learn the same events
with the same feature spec, and both compare the trainer with the same model
learning feature matrices already in memory.

Top-level imports stay in the standard library: the CLI imports the stage
modules, which import this one, to build its parser.
"""

from __future__ import annotations

from pathlib import Path

from hepstream.benchmarks.common import run_for

CHUNK_EVENTS = 25_000  # events per wire message, as the producer's max_chunk_events


def features():
    """The feature spec of the benchmarks: 80 features per event from NanoAOD-like branches."""
    from hepstream.config import FeaturesConfig, JaggedFeature

    return FeaturesConfig(flat=["MET_pt", "MET_phi", "nMuon", "nJet"], jagged=[
        JaggedFeature(branches=["Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge"], length=6,
                      sort_by="Muon_pt"),
        JaggedFeature(branches=["Jet_pt", "Jet_eta", "Jet_phi", "Jet_btag"], length=8, sort_by="Jet_pt"),
    ])


def labelled_batches(folder: Path, events: int, seed: int) -> tuple[list, list, list]:
    """NanoAOD-like signal and background files of ``events`` each, as ``[(path, label)]``, and their events
    as wire-sized Arrow batches (25k events) with a label array per batch."""
    import numpy as np
    import uproot

    from hepstream import wire
    from hepstream.streaming.datagen import generate_file

    spec = features()
    files = [(generate_file(folder / f"{p}.root", p, events, seed + i), int(p == "signal"))
             for i, p in enumerate(("signal", "background"))]
    batches, labels = [], []
    for path, label in files:
        array = uproot.open(path)["Events"].arrays(spec.branches)
        for start in range(0, len(array), CHUNK_EVENTS):
            batches.append(wire.awkward_to_batch(array[start : start + CHUNK_EVENTS]))
            labels.append(np.full(batches[-1].num_rows, label, np.int64))
    return files, batches, labels


def shuffled_matrix(learner, batches, labels) -> tuple:
    """Every batch through ``learner``'s feature pipeline, as one shuffled (features, labels) pair in memory."""
    import numpy as np

    for batch in batches:
        learner.features.learn(learner.features.extract(batch))
    x = np.concatenate([learner.features.transform(b) for b in batches])
    y = np.concatenate(labels)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], y[order]


def learn_in_memory(learner, x, y, group: int, seconds: float = float("inf")) -> tuple[int, float]:
    """Learn ``x`` in groups of ``group`` rows, as the stream trainer's steps, after one untimed warm-up group
    (allocator, kernels); stops early after ``seconds``. Returns (events learned, seconds)."""
    learner.learn_features(x[:group], y[:group])

    def steps():
        for start in range(0, len(x), group):
            learner.learn_features(x[start : start + group], y[start : start + group])
            yield len(x[start : start + group])

    return run_for(steps(), seconds)
