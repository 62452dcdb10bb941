"""Endpoints on the local machine: one detached server process group per endpoint.

An endpoint's lifecycle, one job per module:

- `handler`: the Endpoint handler (facts, read, create, update, delete);
- `config`: the config file a server serves, built from the resource and the registry;
- `folders`: where an endpoint's files live, and its server instances' own folders;
- `supervisor`: launching a server instance, knowing whether it still runs, stopping it;
- `publish`: a new config generation, written and waited for until every worker serves it;
- `observe`: what the workers report they serve, compared with the state;
- `keys`: key generation, hashing, the operator key, issuing keys to a live endpoint;
- `client`: mlinfra's own HTTP requests to an endpoint, with timeouts;
- `rollout`: moving traffic step by step, judging each hold on its own requests.

The protocol with the server (`mlinfra.serving`) is two files per server instance: the
config that mlinfra writes and every worker reloads when it changes, and each worker's
status report (`mlinfra/serving/status.py`).
"""
