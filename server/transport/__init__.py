"""Socket.IO and HTTP edges: parse, call a domain service, serialize. Nothing more."""
