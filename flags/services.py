"""Writes of the flags app: plain keyword-only functions named <entity>_<action>."""
