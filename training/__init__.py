"""rewards-reco's offline side: data, features, training, evaluation, the simulator, the CLI.

Sub-packages:

- ``data``: the world folder's metadata, point-in-time features, Feast operations, training sets.
- ``models``: LightGBM fitting (local or Dask), ONNX export, MLflow tracking and the registry.
- ``evaluation``: held-out metrics, off-policy estimates, uplift tooling, plots. No hidden truth.
- ``simulate``: the synthetic loyalty world and its hidden truth; the only reader of that truth
  (oracle figures, live simulations).
- ``cli``: the ``rewards`` command.

Top-level modules: ``config`` (training settings, promotion gates) and ``pipeline`` (data ->
model -> evaluation -> ONNX -> MLflow, one function per model family).

``training`` may import ``serving`` (its contract, decisioning and stores); never the reverse.
"""
