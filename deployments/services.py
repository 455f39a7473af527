"""Writes of the deployments app: plain keyword-only functions named <entity>_<action>."""
