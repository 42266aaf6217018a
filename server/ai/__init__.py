"""Assistants: an OpenAI-compatible provider with a model fallback chain, and an offline one."""
