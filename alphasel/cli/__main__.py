import sys

from alphasel.cli import main

sys.exit(main())
