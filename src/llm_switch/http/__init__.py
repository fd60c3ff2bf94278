"""The HTTP side: routes, the one error shape, the relay."""
