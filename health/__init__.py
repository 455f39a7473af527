"""The metric store, health policies, checks and alerts."""
