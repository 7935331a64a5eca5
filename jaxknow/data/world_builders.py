"""Builders that materialise the fact worlds (registered with jaxknow.data.build)."""
