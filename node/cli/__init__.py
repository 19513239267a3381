"""The ``flopnet`` command line: every subcommand, and the local devnet harness."""
