"""Rollback plans and executions, approvals and kill switches."""
