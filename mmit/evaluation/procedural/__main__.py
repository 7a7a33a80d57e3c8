import sys

from mmit.evaluation.procedural.build import main

sys.exit(main())
