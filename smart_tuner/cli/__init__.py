"""The command line (``python -m smart_tuner <command>``, also installed as ``smart-tuner``): ``main.py`` parses
and dispatches through its table of commands, ``flags.py`` adds each command's flags."""

from .main import main

__all__ = ["main"]
