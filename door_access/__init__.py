"""door-access: webcam face recognition that unlocks a door for enrolled, live people."""

__version__ = "0.1.0"
