"""The HTTP edge: a lean ASGI app that parses each request once and hands a Call inward."""
