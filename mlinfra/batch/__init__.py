"""Batch endpoints: scoring a whole table with a model version, as Azure ML's batch
endpoints do, without ever holding the table in memory.

A scoring is a job with an identity (the model's and the input's content, the
mini-batch size, the output's form): its input is streamed with pyarrow (CSV, Parquet,
JSONL) and cut into mini-batches (shards) of `mini_batch_size` rows; worker processes,
each with one onnxruntime session, score them; each scored shard is one file put in
place whole, so a scoring killed at any instant resumes where it stopped with no row
lost or scored twice; the output is written in input order with `row_id`.

- `source`: reading inputs in mini-batches, columns to model inputs, bad input;
- `worker`: the worker process (one session, shards in, shard files out);
- `shards`: a job's folder, its manifest, lock and shard files;
- `scoring`: the scorer (dispatch, retries, error threshold, timeouts, output);
- `jobs`: listing what ran.
"""
