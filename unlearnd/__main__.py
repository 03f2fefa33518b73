"""`python -m unlearnd`: the `unlearnd` command (unlearnd.cli.commands)."""

import sys

from unlearnd.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
