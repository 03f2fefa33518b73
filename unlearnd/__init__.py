"""What the API, the workers and the `unlearnd` command share.

- settings, queue, callbacks, runtime, demo: configuration, enqueueing, signed callbacks, stored records as
  torch models and image sets, and the digits demo model.
- security/: API keys, the receipt key and signed receipts.
- ingest/: validation of the datasets and models admins register.
- cli/: the `unlearnd` command and the processes `unlearnd run` supervises.
"""
