import sys

from common.prepare.cli import main

sys.exit(main())
