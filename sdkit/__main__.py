import sys

from sdkit.cli.main import main

sys.exit(main())
