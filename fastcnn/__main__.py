"""python -m fastcnn: the same as the `fastcnn` command."""

import sys

from fastcnn.cli import main

sys.exit(main())
