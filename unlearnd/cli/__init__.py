"""The `unlearnd` command (`commands`) and the processes `unlearnd run` starts and supervises."""
