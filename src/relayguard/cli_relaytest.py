"""`relayguard relaytest`: the command-line face of the open-relay tester (people-facing output).

Part of the CLI, imported by nothing else: the Typer command in cli_app.py (its options and
their help) calls `run`, and so does `fast_main` (cli.main's fast path: plain invocations parsed
here, see cli.py for why). The tester itself is relaytest/ (prober.py has the Python API).
Exit codes (DESIGN.md): 0 every target closed or auth-required, 1 some target open, 2 usage
error or some target unreachable; 130 when interrupted with Ctrl-C before an open relay was
found (what was done is printed first).

Start-up time is part of the command's benchmark (issue 4: the whole battery in half of nmap's
wall time), and importing Typer, Rich or pydantic takes longer than the battery on loopback.
So Rich is imported when a table, a progress bar or an error is printed (not for --json), and
the configuration schema only when the file has a [relaytest] table (`_defaults`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import TYPE_CHECKING, Any, Callable

from . import config_file
from .hostport import parse_hostport
from .relaytest import prober
from .relaytest.catalogue import CASES
from .relaytest.result import Outcome, TargetResult, Verdict

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table
    from rich.text import Text


_consoles: dict[bool, Console] = {}


def _console(stderr: bool = False) -> Console:
    """Rich's console on standard output (or error), made on first use."""
    if stderr not in _consoles:
        from rich.console import Console

        _consoles[stderr] = Console(stderr=stderr)
    return _consoles[stderr]


def _fail(message: str) -> int:
    """Print an error for people (unwrapped, so file:line stays on one line); exit code 2."""
    _console(stderr=True).print(message, highlight=False, markup=False, soft_wrap=True)
    return 2


_VERDICT_STYLE = {Verdict.OPEN: "bold red", Verdict.CLOSED: "bold green", Verdict.AUTH_REQUIRED: "bold yellow",
                  Verdict.UNREACHABLE: "bold magenta"}
_OUTCOME_STYLE = {Outcome.REFUSED: "green", Outcome.ACCEPTED_RCPT: "red", Outcome.ACCEPTED_DATA: "red",
                  Outcome.RELAYED: "bold red", Outcome.ERROR: "yellow"}


def _title(r: TargetResult) -> Text:
    from rich.text import Text

    return Text.assemble((r.target, "bold"), "  ", (r.verdict.value.upper(), _VERDICT_STYLE[r.verdict]), "  ", r.reason)


def _reply_text(code: int, enhanced: str, text: str) -> str:
    return f"{code} {enhanced + ' ' if enhanced else ''}{text}"


def _table(r: TargetResult) -> Table | Text:
    from rich.table import Table
    from rich.text import Text

    if not r.cases and not r.smuggling:
        return _title(r)
    caption = f"{r.banner}  {r.tls}".strip() + f"  ({r.elapsed:.2f} s, {r.sessions} sessions)" if r.banner else None
    table = Table(title=_title(r), title_justify="left", caption=caption, caption_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("trick", ratio=2)
    table.add_column("MAIL FROM", overflow="fold", ratio=2)
    table.add_column("RCPT TO", overflow="fold", ratio=3)
    table.add_column("outcome", ratio=1)
    table.add_column("reply", overflow="fold", ratio=3)
    for c in r.cases:
        reply = c.last_reply
        shown = _reply_text(reply.code, reply.enhanced, reply.text) if reply else c.error
        style = _OUTCOME_STYLE[c.outcome] if c.relay or c.outcome is Outcome.REFUSED else "cyan"
        outcome = c.outcome.value + ("" if c.relay else " (control)")
        table.add_row(c.id, c.name, Text(c.mail_from.partition(":")[2].strip()), Text(c.rcpt_to.partition(":")[2].strip()),
                      Text(outcome, style), Text(shown))
    for m in r.smuggling:
        state = "error" if m.ends_data is None else ("ends DATA" if m.ends_data else "not end of DATA")
        if m.delivered:
            state += ", arrived"
        style = "yellow" if m.ends_data is None else ("red" if m.ends_data else "green")
        last = m.replies[-1].reply if m.replies and m.replies[-1].reply else None
        table.add_row(m.id, "smuggling " + m.name, "", "", Text(state, style),
                      Text(m.error or (_reply_text(last.code, last.enhanced, last.text) if last else "")))
    return table


def _transcript(r: TargetResult) -> None:
    console = _console()
    console.rule(f"{r.target}: transcript")
    for line in r.setup:
        console.print(line, markup=False, highlight=False)
    for c in list(r.cases) + list(r.smuggling):
        console.print(f"--- {c.id} {c.name}", style="bold", markup=False, highlight=False)
        for line in c.transcript:
            console.print(line, markup=False, highlight=False)


def _summary(results: list[TargetResult]) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table("target", "verdict", "relays", "reason", title=f"{len(results)} targets")
    for r in results:
        table.add_row(r.target, Text(r.verdict.value, _VERDICT_STYLE[r.verdict]), ", ".join(c.id for c in r.relays),
                      Text(r.reason))
    return table


def _show(results: list[TargetResult], as_json: bool, transcript: bool) -> None:
    if as_json:
        docs = [r.to_json() for r in results]
        # Many targets: one a line. json's fast C encoder cannot indent; indenting 200 targets'
        # transcripts (13 MB) took longer than testing them.
        print(json.dumps(docs, indent=2) if len(docs) < 2 else "[\n" + ",\n".join(map(json.dumps, docs)) + "\n]")
        return
    for r in results:
        _console().print(_table(r))
        if transcript:
            _transcript(r)
    if len(results) > 1:
        _console().print(_summary(results))


def _exit_code(results: list[TargetResult]) -> int:
    if any(r.verdict is Verdict.OPEN for r in results):
        return 1
    if any(r.verdict is Verdict.UNREACHABLE for r in results):
        return 2
    return 0


def _defaults(config: Path | None) -> Any:  # config.RelayTestSettings or prober.RelayTestOptions
    """The relaytest defaults: the configuration file's [relaytest] table, validated, when it has
    one; else the built-in defaults (RelayTestOptions holds the same as RelayTestSettings; a test
    checks). Only that table is read: validating the whole file takes pydantic, whose import
    alone takes longer than a battery. `relayguard check-config` checks the whole file."""
    found = config_file.read(config)
    if found is None or "relaytest" not in config_file.parse(*found):
        return prober.RelayTestOptions()
    from . import config as config_mod

    return config_mod.load_text(*found, only="relaytest").relaytest


def _progress() -> Progress:
    """The bar across many targets, on standard error."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("relay test"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=_console(stderr=True), transient=True)


def run(targets: list[str] | None = None, input_file: Path | None = None, mode: str = "probe", starttls: bool = False,
        canary_listen: str | None = None, canary_domain: str | None = None, canary_maildir: Path | None = None,
        as_json: bool = False, transcript: bool = False, concurrency: int | None = None,
        connections: int | None = None, timeout: float | None = None, confirm_timeout: float | None = None,
        rate: float = 0.0, time_limit: float = 0.0, smuggling: bool = False, smuggle_rcpt: str = "",
        case: list[str] | None = None, helo: str | None = None, bind: str = "", list_cases: bool = False,
        config: Path | None = None) -> int:
    """`relayguard relaytest` with its options as parameters (defaults as in cli_app.py): the exit code."""
    if list_cases:
        _list(as_json)
        return 0
    try:
        s = _defaults(config)
    except config_file.ConfigError as e:
        return _fail(f"configuration error:\n{e}")
    names = list(targets or [])
    if input_file is not None:
        try:
            names += prober.read_targets(input_file.read_text(encoding="utf-8").splitlines())
        except (OSError, UnicodeDecodeError) as e:
            return _fail(f"{input_file}: cannot read: {e}")
    if not names:
        return _fail("no target given (TARGET... or -i FILE)")
    for name in names:
        try:
            prober.parse_target(name)
        except ValueError as e:
            return _fail(f"{name!r}: not a target: {e}")
    options = prober.RelayTestOptions(
        mode=mode, helo=helo or s.helo, starttls=starttls, canary_domain=canary_domain or s.canary_domain,
        canary_listen=canary_listen if canary_listen is not None else s.canary_listen,
        canary_maildir=str(canary_maildir) if canary_maildir is not None else s.canary_maildir,
        cases=tuple(case or ()), timeout=timeout or s.timeout, confirm_timeout=confirm_timeout or s.confirm_timeout,
        connections=connections or s.connections, concurrency=concurrency or s.concurrency, rate=rate,
        time_limit=time_limit, smuggling=smuggling, smuggle_rcpt=smuggle_rcpt, bind=bind)
    try:
        options.check()
        canary = prober.make_canary(options)
        if options.canary_listen and options.mode == "confirm":
            parse_hostport(options.canary_listen)
    except ValueError as e:
        return _fail(str(e))

    results: list[TargetResult] = []
    progress = _progress() if len(names) > 1 and not as_json else None

    async def go() -> None:
        if canary is not None:
            await canary.start()
        try:
            on_result: Callable[[TargetResult], None] | None = None
            if progress is not None:
                task = progress.add_task("targets", total=len(names))
                on_result = lambda r: progress.advance(task)  # noqa: E731
            await prober.run_async(names, options, canary=canary, results=results, on_result=on_result)
        finally:
            if canary is not None:
                await canary.stop()

    interrupted = False
    try:
        with progress or contextlib.nullcontext():
            asyncio.run(go())
    except KeyboardInterrupt:
        interrupted = True
    except OSError as e:  # the canary could not listen, the Maildir is missing
        return _fail(f"cannot start the canary: {e}")
    if interrupted:
        done = [r for r in results if r.cases or r.error or r.complete]
        _console(stderr=True).print(f"interrupted: {sum(r.complete for r in results)} of {len(results)} targets done",
                                    highlight=False)
        _show(done, as_json, transcript)
        return 1 if any(r.verdict is Verdict.OPEN for r in done) else 130
    _show(results, as_json, transcript)
    return _exit_code(results)


def _path(value: str) -> Path:
    from pathlib import Path

    return Path(value)


def _int(value: str) -> int:
    """Plain decimal digits only: the other forms Typer takes (` 5`, `5.0`, `+5`...) or refuses
    (`٥`, which int() takes) go to Typer."""
    if not re.fullmatch(r"[0-9]+", value):
        raise ValueError(value)
    return int(value)


def _float(value: str) -> float:
    """Plain decimals only (`5`, `2.5`, `.5`), as for _int."""
    if not re.fullmatch(r"[0-9]+\.?[0-9]*|\.[0-9]+", value):
        raise ValueError(value)
    return float(value)


# The options of `relayguard relaytest` for `fast_main`: option -> (parameter of `run`, "flag",
# "multiple" or a converter raising ValueError for what it leaves to Typer). The Typer command in
# cli_app.py defines them (with their help and defaults); tests/test_relaytest_cli.py checks that
# the three agree.
OPTIONS: dict[str, tuple[str, Any]] = {
    "-i": ("input_file", _path), "--input": ("input_file", _path), "--mode": ("mode", str),
    "--starttls": ("starttls", "flag"), "--canary-listen": ("canary_listen", str),
    "--canary-domain": ("canary_domain", str), "--canary-maildir": ("canary_maildir", _path),
    "--json": ("as_json", "flag"), "--transcript": ("transcript", "flag"), "--concurrency": ("concurrency", _int),
    "--connections": ("connections", _int), "--timeout": ("timeout", _float),
    "--confirm-timeout": ("confirm_timeout", _float), "--rate": ("rate", _float), "--time-limit": ("time_limit", _float),
    "--smuggling": ("smuggling", "flag"), "--smuggle-rcpt": ("smuggle_rcpt", str), "--case": ("case", "multiple"),
    "--helo": ("helo", str), "--bind": ("bind", str), "--list": ("list_cases", "flag"),
    "-c": ("config", _path), "--config": ("config", _path),
}


def fast_main(args: list[str]) -> int | None:
    """`relayguard relaytest ARGS` without Typer: the exit code; or None, leaving ARGS to Typer (and
    its usual answer), when they hold anything but targets and the OPTIONS as `--opt value`,
    `--opt=value` or `-c value`: --help, an unknown option, `-`, `--`, `-cFILE`, a missing value,
    a number not in plain decimal. As with Click, a later value of an option replaces an earlier
    one and a value may start with `-`."""
    kwargs: dict[str, Any] = {}
    targets: list[str] = []
    rest = iter(args)
    for arg in rest:
        if not arg.startswith("-"):
            targets.append(arg)
            continue
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name not in OPTIONS:
            return None
        param, kind = OPTIONS[name]
        if kind == "flag":
            if eq:
                return None
            kwargs[param] = True
            continue
        if not eq:
            value = next(rest, None)
            if value is None:
                return None
        if kind == "multiple":
            kwargs.setdefault(param, []).append(value)
            continue
        try:
            kwargs[param] = kind(value)
        except ValueError:
            return None
    return run(targets or None, **kwargs)


def _list(as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"id": c.id, "name": c.name, "mail_from": c.mail_from, "rcpt_to": c.rcpt_to, "probes": c.probes,
                           "source": c.source, "relay": c.relay, "case": c.case, "verbs": c.verbs,
                           "colon_space": c.colon_space} for c in CASES], indent=2))
        return
    from rich.table import Table
    from rich.text import Text

    table = Table("id", "trick", "MAIL FROM", "RCPT TO", "probes", "source", title=f"{len(CASES)} cases")
    for c in CASES:
        extra = ", ".join(x for x in (c.case and f"{c.case}-case addresses", c.verbs and f"{c.verbs}-case verbs",
                                      c.colon_space and "space after colon", not c.relay and "control") if x)
        table.add_row(c.id, c.name + (f" ({extra})" if extra else ""), Text(c.mail_from), Text(c.rcpt_to), c.probes, c.source)
    _console().print(table)
