"""The original RobNets command line, kept for its users:

    python main.py --config ./experiments/RobNet_free_cifar10/config.py --eval_only

All logic lives in the package (``robnets.cli.original_main``); ``robnets eval`` is the full interface.
"""

import sys
from pathlib import Path

try:
    from robnets.cli import original_main
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from robnets.cli import original_main

if __name__ == "__main__":
    sys.exit(original_main())
