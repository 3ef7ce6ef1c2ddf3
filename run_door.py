#!/usr/bin/env python3
"""Run door-access from a checkout: `python run_door.py <subcommand> ...` (no subcommand: `run`)."""

import sys

from door_access.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["run"]))
