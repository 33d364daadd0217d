import sys

from gemma4stack.cli import main

sys.exit(main())
