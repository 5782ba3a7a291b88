"""The nearest names to a mistyped one, for errors that say "did you mean ...?" (uproot's habit).

Branches, trees, request fields and configuration keys all suggest through
here, so every such hint reads alike and ranks alike (difflib's similarity
ratio, at least 0.6).

>>> nearest("MET_ptt", ["MET_pt", "MET_phi", "Muon_pt"])
['MET_pt', 'MET_phi']
>>> did_you_mean("met_pt", ["MET_pt", "nMuon"], ignore_case=True), did_you_mean("zzz", ["MET_pt"])
("did you mean 'MET_pt'?", '')
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def nearest(name: str, candidates: Iterable[str], n: int = 3, *, ignore_case: bool = False) -> list[str]:
    """Up to ``n`` candidates close to ``name``, closest first; ``ignore_case`` for names users type freely."""
    if not ignore_case:
        return difflib.get_close_matches(name, list(candidates), n=n)
    spelled = {candidate.lower(): candidate for candidate in candidates}
    return [spelled[close] for close in difflib.get_close_matches(name.lower(), list(spelled), n=n)]


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3, *, ignore_case: bool = False) -> str:
    """``"did you mean 'a', 'b'?"``, or ``""`` when nothing is close, for the caller to punctuate."""
    close = nearest(name, candidates, n, ignore_case=ignore_case)
    return f"did you mean {', '.join(map(repr, close))}?" if close else ""
