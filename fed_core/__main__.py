import sys

from fed_core.cli import main

sys.exit(main())
