"""Writes of the health app: plain keyword-only functions named <entity>_<action>."""
