"""`python -m alphasel ...`, as torchrun and accelerate launch call it (`-m alphasel train`)."""

import sys

from alphasel.cli import main

sys.exit(main())
