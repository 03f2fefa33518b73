"""Secrets and proof: API keys, the callback (HMAC) key, the Ed25519 signing key that signs served states,
artifact manifests and receipts, and signed receipts; secrets kept by one secret-file helper."""
