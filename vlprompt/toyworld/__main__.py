"""python -m vlprompt.toyworld [--trainer T --config-file CFG]: the options that run CFG on the toy world."""
import sys

from .options import main

sys.exit(main())
