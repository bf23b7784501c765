"""Durable state of the node: database schema and engine, spool of received instances, job queue,
outbox and audit log. Imports nothing of ours and no torch."""
