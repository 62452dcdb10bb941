"""Serving: one ONNX Runtime server per endpoint, several worker processes, every
deployment's session warmed up before it takes traffic, traffic split by weight,
shadow mirrors, dynamic batching, and new deployments swapped in without a restart.

It imports only onnxruntime, NumPy and its HTTP stack (uvicorn, orjson), never the
engine, Pulumi or jsonschema, so an endpoint image stays small.
"""
