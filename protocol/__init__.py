"""Wire records, canonical msgpack, signed envelopes, identities, the manifest, the libp2p host."""
