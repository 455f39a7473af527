"""Writes of the rollback app: plain keyword-only functions named <entity>_<action>."""
