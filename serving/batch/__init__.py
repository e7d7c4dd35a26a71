"""Offline scoring of every member with the champion models (`rewards score-batch`).

``scoring`` (chunks of members, the same candidate rows and scoring as the API), ``compiled``
(the champion's native trees compiled by lleaves, parity-checked against ONNX),
``partitioned`` (Dask partitions, same code per partition), ``cluster`` (the Dask client).

May import: ``serving.contract``, ``serving.decisioning``, ``serving.stores``.
"""
