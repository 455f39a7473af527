"""Writes of the routing app: plain keyword-only functions named <entity>_<action>."""
