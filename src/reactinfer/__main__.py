import sys

from .cli.main import main

# guarded: importing the module (a tool walking the package) must not run the CLI
if __name__ == "__main__":
    sys.exit(main())
