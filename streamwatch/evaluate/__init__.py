"""Offline evaluation: the NAB score, event-level metrics on simulator scenarios, the
runner that replays scenarios and CSV files through the production detector path, and
the HTML report.

Modules: ``nab`` (NAB scoring, pure), ``corpus`` (NAB-format corpora and results files),
``reference`` (NAB's windowed-Gaussian detector, to validate the scorer), ``squash``
(causal mapping of detector scores to [0, 1]), ``events`` (event-level metrics, pure),
``runner`` (drives detectors), ``report`` (plotly HTML).
"""
