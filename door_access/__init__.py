"""door-access: webcam face recognition that unlocks a door for enrolled, live people.

`door_access.api` is the recognition core as plain verbs on photos (docs/api.md); it is imported on first
use, so `import door_access` loads no model library.
"""

__version__ = "0.1.0"
__all__ = ["__version__", "api"]


def __getattr__(name: str):
    if name == "api":
        import importlib

        return importlib.import_module("door_access.api")
    raise AttributeError(f"module 'door_access' has no attribute {name!r}")
