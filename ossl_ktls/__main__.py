"""``python -m ossl_ktls``: the same command line as ``ossl-ktls``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
