"""The request parser: the client's body validated once into a :class:`~kvgate.core.call.Call`."""
