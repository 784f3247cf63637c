"""`python -m rmt ...`: the `rmt` command, also where another program of that name comes first on PATH (Debian's
tar package installs a remote tape server as /usr/sbin/rmt)."""

import sys

from rmt.cli import main

sys.exit(main())
