"""The one error type of the scene path: bad input or a stopped run, said in words."""
from __future__ import annotations


class SceneError(ValueError):
    """A scene cannot be (or was not completely) super-resolved; the message says why and what
    to do. A ValueError, so `python -m sharp` prints it without a traceback."""
