"""The node: daemon, roles (publisher, validator, worker), model process, API and command line."""
