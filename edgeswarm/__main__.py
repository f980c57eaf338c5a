import sys

from edgeswarm.cli import main

sys.exit(main())
