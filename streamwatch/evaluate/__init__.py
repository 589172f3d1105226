"""Offline evaluation: the NAB score, event-level metrics on simulator scenarios, the
runner that replays scenarios and NAB files through the production detector path, and
the HTML report.

Modules: ``nab`` (NAB scoring, pure), ``corpus`` (NAB-format corpora and results files),
``reference`` (NAB's windowed-Gaussian detector, which validates the scorer against NAB's
published figures), ``squash`` (causal maps of raw scores to [0, 1]), ``events``
(event-level metrics, pure), ``detectors`` (named detectors), ``runner`` (drives them),
``tables`` (side-by-side tables) and ``report`` (plotly HTML).
"""
