"""Shared library of the clickstream services. Imports no service."""
