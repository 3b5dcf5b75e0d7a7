"""Statistics, tables and figures of results; pure functions of arrays and tables.

- ``cvstats``: per-variant CV statistics, paired tests, the variant choice;
- ``metrics``: test metrics, evaluate's headline metrics and provenance;
- ``calibration``: ECE and reliability bins, temperature scaling;
- ``significance``: the one significance level, McNemar's exact test of two classifiers;
- ``plot_data``: the CSV files ``dvc plots`` draws;
- ``figures``: the PNG figures under reports/figures;
- ``report``: reports/report.md;
- ``plots_html``: the offline template for ``dvc plots show/diff``.

Below ``training``: crossval and the final model call these statistics.
"""
