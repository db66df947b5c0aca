"""Failover across deployments, circuit breaking, and resuming cut streams."""
