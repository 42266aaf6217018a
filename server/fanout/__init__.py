"""Delivery to this instance's connections, whatever their transport: the room hub
(membership, delivery, per-room channels), the per-room ordering state machine, the frames it
hands to members, and one bounded outbox per connection. Wire encodings are the transports'
(codecs); the message history it fills gaps from is a port given at construction."""
