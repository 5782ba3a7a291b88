from hepstream.suggest import did_you_mean, nearest


def test_nearest_ranks_the_closest_first_and_stops_at_n():
    branches = ["Muon_eta", "Muon_pt", "Jet_pt", "MET_pt", "Muon_phi"]
    assert nearest("Muon_ptt", branches) == ["Muon_pt", "Muon_phi", "Muon_eta"]
    assert nearest("Muon_ptt", branches, n=1) == ["Muon_pt"]
    assert nearest("Electron_charge", branches) == []


def test_ignoring_case_returns_the_candidates_as_spelled():
    assert nearest("met_PT", ["MET_pt", "nMuon"]) == []
    assert nearest("met_PT", ["MET_pt", "nMuon"], ignore_case=True) == ["MET_pt"]


def test_did_you_mean_lists_every_suggestion_or_says_nothing():
    assert did_you_mean("Event", ["Events", "Runs", "Event_tree"]) == "did you mean 'Events', 'Event_tree'?"
    assert did_you_mean("Event", ["Runs"]) == ""
