"""Coordination implementations: ``memory`` (one instance) and ``redis`` (a cluster)."""
