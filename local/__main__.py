"""``python -m local ...`` (what ``aipm local ...`` runs): the local stack's entry point."""

import sys

from local.commands import main

sys.exit(main())
