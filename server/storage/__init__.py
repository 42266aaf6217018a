"""Store implementations: ``memory`` (default, single process) and ``mongo`` (production)."""
