"""The outbox workers: take due tasks, run their handlers, retry with backoff."""
