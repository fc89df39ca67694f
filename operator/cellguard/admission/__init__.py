"""Validating admission webhooks (thin kopf handlers)."""
