"""Response caching: exact (canonical request key) now, semantic behind the same stage."""
