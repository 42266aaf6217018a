"""Real-time consultation server: Socket.IO rooms with a streamed AI assistant."""

__version__ = "0.1.0"
