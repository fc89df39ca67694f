"""The cellguard.io API models."""
