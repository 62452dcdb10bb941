"""Imported first by the fork server the scoring workers are forked from, before NumPy.

A worker's arithmetic is onnxruntime's, on its share of the cores; NumPy only moves
columns. OpenBLAS's threads, which NumPy starts when imported, would only spin: each
spends a tenth of a second of CPU after it starts, taken from the workers on a small
machine. NOTE: benchmarks/batch.py, the mlinfra rows: CPU s (perf showed 8% of the
scoring's CPU in blas_thread_server). Only this process and its forks are concerned:
the scorer's own environment is left as it is (`mlinfra batch invoke` sets it for
its own process, whose only children are this server and the workers).
"""

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"
