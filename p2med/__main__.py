import sys

from p2med.cli import main

sys.exit(main())
