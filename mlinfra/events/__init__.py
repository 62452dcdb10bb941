"""Events, webhooks, schedules and the agent.

Every change mlinfra makes is announced once: handlers stage events on the engine's unit
of work, and `StateStore.record_events` writes each one, as a CloudEvents 1.0 envelope,
into the outbox in the transaction of the change (`catalog` lists them with their data
schemas). `outbox` keeps the events and their deliveries; `webhooks` delivers them to
`kind: Webhook` receivers, signed as Standard Webhooks specifies, with retries, 410 and
dead letters; `schedules` says when a `kind: Schedule` fires (cronsim, zoneinfo) and
records each fired instant once; `agent` is the process that fires due schedules and
delivers the outbox (`mlinfra agent`), and `flush` is what a command that wrote does
before it exits.
"""
