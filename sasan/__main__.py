import sys

from sasan.cli import main

sys.exit(main())
