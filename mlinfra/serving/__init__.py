"""Serving: one ONNX Runtime server per endpoint, several worker processes, every
deployment's session warmed up before it takes traffic, traffic split by weight,
shadow mirrors, dynamic batching, and new deployments swapped in without a restart.

One module per job: `app` ties them together for uvicorn (`__main__` supervises the
workers); `routes` (paths, methods, which need a key), `auth` (keys), `http` (bodies
and answers), `connections` (idle and slow clients), `limits`; `inference` (a request
from body to answer) with the protocols `v2` (Open Inference Protocol, Triton's binary
extension) and `mlflow` (MLflow's scoring protocol), `tensors` (datatypes and the
signature check), `table` (the routing table), `model` (a loaded model),
`onnx_files` (its external data), `zipmap` (ZipMap outputs served as tensors),
`batcher`, `mirror`; `reload` (hot reload of the config), `status` (status reports),
`metrics` and `shared` (one view across workers), `captures`, `access_log` and
`rotating` (files bounded by size); `errors`.

It imports only onnxruntime, NumPy and its HTTP stack (uvicorn, orjson), never the
engine, Pulumi or jsonschema, so an endpoint image stays small.
"""
