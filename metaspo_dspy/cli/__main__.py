"""python -m metaspo_dspy.cli"""

import sys

from metaspo_dspy.cli import main

sys.exit(main())
