import sys

from stuffed_mamba.cli import main

sys.exit(main())
