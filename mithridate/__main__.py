import sys

from mithridate.cli import main

sys.exit(main())
