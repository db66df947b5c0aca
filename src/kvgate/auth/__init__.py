"""API-key authentication: which tenant a request belongs to."""
