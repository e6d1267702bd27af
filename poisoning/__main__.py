import sys

from poisoning.cli import main

sys.exit(main())
