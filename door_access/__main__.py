import sys

from door_access.cli import main

if __name__ == "__main__":  # detector processes are spawned: they import this module and must not run the CLI
    sys.exit(main())
