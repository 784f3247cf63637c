"""`python -m rmt.cli ...` (what `torchrun -m` and `accelerate launch -m` start): the `rmt` command."""

import sys

from rmt.cli import main

sys.exit(main())
