"""The request's journey, composed once: auth -> limits -> cache -> routing/failover -> provider."""
