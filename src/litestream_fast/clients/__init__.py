"""Replica clients, one module per storage backend."""
