"""The studio: a read-only web UI over one stack's state and artifacts.

`mlinfra studio` serves it (Starlette, Jinja2 templates, htmx for the parts that update
themselves, uPlot for charts and dagre for graph layout, all served from the package so
it works offline). Every page reads the state through the store and the registry and
runs modules, opened read-only: nothing in the studio changes a stack. It binds to
127.0.0.1 unless told otherwise, and then requires a token (`security`).

One concept per module: `context` (what every page reads), `security` (token, headers,
hosts), `filters` and `runs_index` (the runs table), `charts` (downsampled curves),
`lineage` (a model version's graph), `endpoint_metrics` (the servers' /metrics), and
one module of pages per area (`overview`, `plan_pages`, `run_pages`, `model_pages`,
`data_pages`, `endpoint_pages`, `monitor_pages`), joined by `app`.
"""
