"""Shared settings, the demo model bootstrap and the `unlearnd` command (launcher, receipts)."""
