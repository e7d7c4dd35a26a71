"""Fitting, exporting and registering models.

``lgbm`` (LightGBM with time-based early stopping), ``dask_train`` (the same on a Dask
cluster), ``export`` (ONNX conversion and the parity check), ``tracking`` (MLflow runs, the
registry, the promotion gate, rollback).

May import: ``training.data``, ``training.config``, ``serving.contract``, ``serving.stores``.
"""
