"""Tools to test flopnet networks: hostile peers that speak the protocol (see ``hostile``)."""
