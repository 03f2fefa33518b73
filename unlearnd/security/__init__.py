"""Secrets and proof: API keys, the receipt key and signed receipts, all kept by one secret-file helper."""
