"""The `relayguard` command's entry point: `main` (the console script runs relayguard.cli:main,
and `python -m relayguard` does too). The command itself, a Typer app, is cli_app.py.

Why this module is apart and small: start-up time is part of `relayguard relaytest`'s benchmark
(issue 4: the whole battery against a loopback target in half of nmap's wall time), and importing
Typer, Click, Rich and the configuration schema (pydantic) takes several times longer than the
battery. So `main` first offers a `relaytest` command line to cli_relaytest.fast_main, which runs
the plain forms (targets and known options) with none of those imports, and hands anything else
(--help, an unknown option or a bad value) back for the Typer app to parse and answer as usual.
Every other command goes straight to the app.
"""

from __future__ import annotations

import gc
import os
import sys


def main() -> None:
    if sys.argv[1:2] == ["relaytest"]:
        from .cli_relaytest import fast_main

        try:
            code = fast_main(sys.argv[2:])
        except KeyboardInterrupt:  # outside the battery (which prints what it did): as Click does
            print("\nAborted!", file=sys.stderr)
            code = 1
        except BrokenPipeError:  # output cut short (`| head`): quietly, as Click does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = 1
        if code is not None:
            gc.freeze()  # exiting: spare the shutdown's garbage collections every object made so far (7 of 80 ms)
            sys.exit(code)
    from .cli_app import app

    app()
