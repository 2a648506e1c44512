"""Sweeps: a sweep YAML run through Ray Tune (or inline) under Optuna, tracked in MLflow, results in Parquet.

Import `apd.sweep.runner` (`sweep_main`, `add_sweep_args`) or `apd.sweep.spec` (`load_spec`); this
package imports nothing heavy itself, so `import apd` never loads Ray, Optuna or MLflow.
"""
