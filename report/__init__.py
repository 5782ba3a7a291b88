"""Pictures of a model's life: ROC and score distributions on held-out events, prequential curves, rate and lag.

``history.py`` reads the store's versions into one record, ``holdout.py``
scores a version on events it has not trained on, ``figures.py`` draws the
panels (matplotlib, mplhep's style), ``page.py`` turns them into PNG files
and one self-contained HTML page. ``hepstream report`` writes that page and
the serving app's ``/ui`` answers with it.
"""

# mplhep's experiment styles a report may be drawn in; here, so the CLI lists them without importing matplotlib.
STYLES = ("CMS", "ATLAS", "LHCb2", "ALICE", "ROOT")
