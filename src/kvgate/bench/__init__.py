"""Load generation and benchmark scenarios."""
