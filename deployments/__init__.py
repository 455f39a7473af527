"""Canary deployments, their phases, lifecycle and the control tick."""
