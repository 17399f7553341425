"""The error type the command-line tools turn into one clear message and a non-zero exit."""
from __future__ import annotations

import functools
import sys


class NdartsError(Exception):
    """A problem the user can fix: bad input, missing data, bad checkpoint, full disk."""


def cli_errors(main):
    """Runs a CLI main: NdartsError (and the other known user errors) print one line, exit 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        from .backend import BackendError
        from .genotype import GenotypeError

        try:
            return main(argv)
        except (NdartsError, GenotypeError, BackendError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)  # a search or training run has logged how to go on
            sys.exit(130)

    return wrapper
