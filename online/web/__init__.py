"""The daemon's web endpoint: Prometheus metrics, JSON status, the DQM view and the dashboard.

Owns ``metrics`` (the daemon's metrics registry), ``server`` (read-only HTTP) and the dashboard's
static files. Imports no other ``l1forge.online`` subpackage: the data it serves comes in as
callables.
"""
