"""The papers' experiments, run by `benchmarks/replicate.py`.

- `experiments`: the experiments as a table (`plan`), each run through `training.train_run` or
  measured at initialisation (`run`), and their results gathered into results.json's layout.
- `findings`: each finding of SPEC (F1-F6, T1, Z1) decided from those results.
- `report`: replication.md and its figures (the package's `plots` and `reports`).
"""
