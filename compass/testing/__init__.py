"""Test support: pytest fixtures that start real services (see :mod:`compass.testing.fixtures`)."""
