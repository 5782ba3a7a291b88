import pytest

from hepstream.config import ConfigError, DatasetConfig
from hepstream.streaming.selection import MissingBranches, Selection, UnknownBranch
from hepstream.streaming.sources import resolve


def test_globs_file_lists_samples_and_lfns(tmp_path):
    for name in ("sig_1.root", "sig_2.root", "bkg.root"):
        (tmp_path / name).touch()
    listing = tmp_path / "files.txt"
    listing.write_text("# background, labelled per line\nbkg.root 0\n\nroot://eos.example//a.root 1  # remote\n/store/mc/b.root\n")
    dataset = DatasetConfig(
        files=[{"url": str(tmp_path / "sig_*.root"), "label": 1}, {"url": str(tmp_path / "none_*.root")}],
        redirector="root://cms-xrd-global.cern.ch",
        samples=[{"name": "mixed", "file_list": listing, "label": 7, "tree": "Other"}],
    )
    sources, problems = resolve(dataset)
    assert [(s.url, s.label, s.tree, s.sample) for s in sources] == [
        (str(tmp_path / "sig_1.root"), 1, "Events", None),
        (str(tmp_path / "sig_2.root"), 1, "Events", None),
        (str(tmp_path / "bkg.root"), 0, "Other", "mixed"),
        ("root://eos.example//a.root", 1, "Other", "mixed"),
        ("root://cms-xrd-global.cern.ch//store/mc/b.root", 7, "Other", "mixed"),
    ]
    assert problems == [(str(tmp_path / "none_*.root"), "no file matches this pattern")]


def test_bad_file_list_line_is_named(tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text("a.root\nb.root signal\n")
    with pytest.raises(ConfigError, match=r"files.txt:2: expected 'URL \[label\]'"):
        resolve(DatasetConfig(file_list=listing))
    with pytest.raises(ConfigError, match="file list .*nope.txt"):
        resolve(DatasetConfig(file_list=tmp_path / "nope.txt"))


def test_branch_patterns_exclusions_and_unknown_names():
    branches = ["MET_pt", "Muon_pt", "Muon_eta", "Muon_charge", "Jet_pt", "Jet_eta"]
    selection = Selection.from_config(DatasetConfig(branches=["/^Jet_/", "MET_*"], exclude=["*_eta"]), [])
    assert selection.resolve(branches).published == ("Jet_pt", "MET_pt")
    with pytest.raises(MissingBranches, match=r"lacks branch\(es\) \['Tau_\*', 'MET_ptt'\].*did you mean 'MET_pt'"):
        Selection.from_config(DatasetConfig(branches=["Tau_*", "MET_ptt"]), []).resolve(branches)
    typo = Selection.from_config(DatasetConfig(cuts=["any(Muon_ptt > 3)"]), ["MET_pt"])
    with pytest.raises(UnknownBranch, match=r"cut 'any\(Muon_ptt > 3\)' reads unknown branch\(es\) \['Muon_ptt'\]"):
        typo.resolve(branches)
    with pytest.raises(ConfigError, match="not a regular expression"):
        Selection.from_config(DatasetConfig(branches=["/(/"]), [])
