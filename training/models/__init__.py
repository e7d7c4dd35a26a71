"""Fitting, exporting and registering models.

``params`` (LightGBM parameters shared by both engines), ``lgbm`` (local fit with time-based
early stopping), ``dask_train`` (the same model on a Dask cluster), ``export`` (ONNX conversion
and the parity check), ``tracking`` (MLflow runs, the registry, the promotion gate, rollback).

May import: ``training.data``, ``training.config``, ``serving.contract``, ``serving.stores``.
"""
