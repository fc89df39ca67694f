"""Read-only commands: `cellguard plan` and `cellguard status` (also `kubectl cellguard ...`)."""
