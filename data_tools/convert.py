"""Thin entry point: ``python data_tools/convert.py --format llava --input FILE --output DIR ...``.

Same as ``mmit convert``; see :func:`mmit.data.convert.main` for the options and exit codes.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script from a checkout: make ``mmit`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmit.data.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
