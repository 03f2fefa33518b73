"""RQ edge: job functions enqueued by dotted path, the worker entry point and the janitor."""
