"""Socket.IO at ``/socket.io/``: python-socketio is the protocol layer of namespace ``/chat``."""
