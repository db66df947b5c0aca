"""The ground floor: the types every stage of the journey shares, importing no stage.

- :mod:`kvgate.core.provider`: the provider Protocol and one attempt's request (``UpstreamCall``).
- :mod:`kvgate.core.deployment`: a deployment at run time, its live stats, a route decision.
- :mod:`kvgate.core.call`: the request as it travels (``Call``), what comes back, the ``Stage``.
"""
