"""`nnsight-graph serve`: hosts models for `remote=True` traces (docs/remote_api.md).

`cli` parses the command line, `app` is the HTTP API (FastAPI), `store` the SQLite job store
with payload and result files, `models` one model's worker process and dispatcher, `worker`
the worker's loop (the model loads there, once).
"""
