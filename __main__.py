"""``python -m flopnet``: the ``flopnet`` command."""

import sys

from flopnet.node.cli.main import main

sys.exit(main())
