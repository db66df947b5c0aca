"""Prometheus metrics and the /admin/stats view."""
