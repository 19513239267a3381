"""The terminal UI: attaches to a node's local API over HTTP (never torch or libp2p)."""
