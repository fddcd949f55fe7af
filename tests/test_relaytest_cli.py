"""`relayguard relaytest` as a user runs it: exit codes, tables, JSON, transcripts, confirm mode
with the built-in canary, target files, usage errors and Ctrl-C."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer

from relayguard import cli_app, cli_relaytest
from relayguard.config import RelayTestSettings
from relayguard.relaytest.catalogue import CASES
from relayguard.relaytest.prober import RelayTestOptions

from conftest import free_port
from relay_fixtures import FixtureThread


def rg(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relayguard", "relaytest", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, COLUMNS="200"))


@pytest.fixture
def fixtures():
    ft = FixtureThread()
    yield ft
    ft.close()


def test_closed_server_exit_0_and_json_has_every_transcript(server, tmp_path):
    r = rg(f"127.0.0.1:{server.smtp_port}", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (target,) = json.loads(r.stdout)
    assert target["verdict"] == "closed" and target["relays"] == []
    assert len(target["cases"]) == len(CASES)
    for case in target["cases"]:
        assert case["outcome"] == "refused"
        assert any(line.lower().startswith("c: rcpt to:") for line in case["transcript"])
        assert case["replies"][-1]["reply"]["code"] >= 500


def test_open_fixture_exit_1_table_names_the_tricks(fixtures, tmp_path):
    _, port = fixtures.mta(accepts=lambda rcpt: "%" in rcpt)
    r = rg(f"127.0.0.1:{port}", "--case", "R1", "--case", "S2", "--transcript", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "OPEN" in r.stdout and "R1" in r.stdout and "accepted-rcpt" in r.stdout
    assert "C: RCPT TO:<relaytest%example.com@[127.0.0.1]>" in r.stdout


def test_confirm_mode_with_the_built_in_canary(fixtures, tmp_path):
    canary_port = free_port()
    mta, port = fixtures.mta(accepts=lambda rcpt: rcpt.startswith("<@"), forward_to=("127.0.0.1", canary_port),
                             forward_rcpt="relaytest@canary.test")
    r = rg(f"127.0.0.1:{port}", "--mode", "confirm", "--canary-listen", f"127.0.0.1:{canary_port}",
           "--canary-domain", "canary.test", "--confirm-timeout", "30", "--json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    (target,) = json.loads(r.stdout)
    relayed = {c["id"] for c in target["cases"] if c["outcome"] == "relayed"}
    assert relayed == set(target["relays"]) == {"R8", "R9", "N10", "N13"}
    assert len(mta.messages) == 4


def test_targets_from_a_file_and_unreachable_exit_2(server, tmp_path):
    (tmp_path / "targets").write_text(f"# ours\n127.0.0.1:{server.smtp_port}\n\n127.0.0.1:{free_port()}  # nothing there\n")
    r = rg("-i", "targets", "--case", "S2", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "2 targets" in r.stdout and "closed" in r.stdout and "unreachable" in r.stdout


def test_smuggling_probe_from_the_command_line(fixtures, tmp_path):
    _, port = fixtures.mta(accepts=lambda rcpt: "postmaster" in rcpt.lower(), extra_ends=(b"\n.\n",))
    r = rg(f"127.0.0.1:{port}", "--mode", "data", "--smuggling", "--case", "S2", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (target,) = json.loads(r.stdout)
    assert {m["id"]: m["ends_data"] for m in target["smuggling"]}["M1"] is True
    assert [m["id"] for m in target["smuggling"] if m["ends_data"]] == ["M1"]


@pytest.mark.parametrize("args, message", [
    (["--mode", "bogus", "127.0.0.1:25"], "mode must be one of"),
    ([], "no target given"),
    (["--mode", "confirm", "127.0.0.1:25"], "needs --canary-listen"),
    (["--smuggling", "127.0.0.1:25"], "needs mode data or confirm"),
    (["127.0.0.1:99999"], "not a target"),
    (["-i", "missing.txt"], "cannot read"),
    (["--case", "Z9", "127.0.0.1:25"], "unknown case id"),
])
def test_usage_errors_exit_2(tmp_path, args, message):
    r = rg(*args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr, (r.returncode, r.stderr)


def test_list_prints_the_catalogue(tmp_path):
    r = rg("--list", "--json", cwd=tmp_path)
    assert r.returncode == 0
    assert [c["id"] for c in json.loads(r.stdout)] == [c.id for c in CASES]


def test_ctrl_c_prints_what_is_done(server, fixtures, tmp_path):
    silent, port = fixtures.mta(silent=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relayguard", "relaytest", f"127.0.0.1:{server.smtp_port}", f"127.0.0.1:{port}",
         "--concurrency", "1", "--timeout", "60", "--json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background shell may have ignored it
    try:
        assert silent.connected.wait(30)  # the first target is done, the second has started
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted: 1 of 2 targets done" in err
    assert [(t["target"], t["verdict"]) for t in json.loads(out)] == [(f"127.0.0.1:{server.smtp_port}", "closed")]


# The fast path (cli.main -> cli_relaytest.fast_main: plain command lines run without Typer) -------


def test_fast_path_knows_every_option_of_the_typer_command_as_typer_does():
    command = typer.main.get_command(cli_app.app).get_command(None, "relaytest")
    hints = typing.get_type_hints(cli_app.relaytest)
    typer_defaults = inspect.signature(cli_app.relaytest).parameters
    run_defaults = inspect.signature(cli_relaytest.run).parameters
    converters = {int: cli_relaytest._int, float: cli_relaytest._float, str: str, Path: cli_relaytest._path}
    seen = set()
    for param in command.params:
        if param.name in ("install_completion", "show_completion"):  # Typer's own: left to Typer
            continue
        assert run_defaults[param.name].default == typer_defaults[param.name].default, param.name
        if param.name == "targets":
            continue
        assert not param.secondary_opts, param.name
        kind = typing.get_args(hints[param.name])[0] if typing.get_origin(hints[param.name]) is typing.Union else hints[param.name]
        expected = "flag" if param.is_flag else "multiple" if param.multiple else converters[kind]
        for opt in param.opts:
            assert cli_relaytest.OPTIONS[opt] == (param.name, expected), opt
            seen.add(opt)
    assert seen == set(cli_relaytest.OPTIONS)


def test_built_in_defaults_are_the_config_defaults():
    settings, options = RelayTestSettings(), RelayTestOptions()
    for name in ("helo", "canary_domain", "canary_listen", "canary_maildir", "timeout", "confirm_timeout",
                 "connections", "concurrency"):
        assert getattr(settings, name) == getattr(options, name), name


@pytest.mark.parametrize("args", [
    ["--timeout", "5.0e0", "--list", "--json"],  # not plain decimal: Typer's conversion
    ["--json=", "--list"],  # a flag with a value: Typer's error
    ["--help"],
])
def test_what_the_fast_path_does_not_parse_goes_to_typer(tmp_path, args):
    r = rg(*args, cwd=tmp_path)
    if args[0] == "--timeout":
        assert r.returncode == 0 and [c["id"] for c in json.loads(r.stdout)] == [c.id for c in CASES]
    elif args[0] == "--help":
        assert r.returncode == 0 and "relaytest [OPTIONS]" in r.stdout and "--canary-listen" in r.stdout
    else:
        assert r.returncode == 2 and "--json" in r.stderr, r.stderr


def test_typer_path_runs_the_same_command(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli_app.app, ["relaytest", "--case", "S2", "--json", f"127.0.0.1:{free_port()}"])
    assert r.exit_code == 2
    (target,) = json.loads(r.stdout)
    assert target["verdict"] == "unreachable"


def test_plain_run_imports_neither_typer_rich_nor_pydantic(tmp_path):
    """Start-up time (issue 4): a battery with --json needs none of them, nor a [relaytest]-less config."""
    (tmp_path / "relayguard.toml").write_text('[smtp]\nlisten = ["127.0.0.1:2525"]\n')
    code = ("import sys\nfrom relayguard.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n"
            "    print(e.code, sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'click', 'rich', 'pydantic'}), "
            "file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, "relaytest", f"127.0.0.1:{free_port()}", "--json"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.stderr.strip() == "2 []", r.stderr
    assert json.loads(r.stdout)[0]["verdict"] == "unreachable"


def test_only_the_relaytest_table_of_the_config_is_read(fixtures, tmp_path):
    _, port = fixtures.mta(accepts=lambda rcpt: False)
    config = tmp_path / "relayguard.toml"
    config.write_text('[smtp]\nlisten = ["nowhere"]\n\n[relaytest]\nhelo = "tester.example"\n')  # [smtp] is wrong
    r = rg(f"127.0.0.1:{port}", "--case", "S2", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "C: EHLO tester.example" in json.loads(r.stdout)[0]["setup"]
    config.write_text('[relaytest]\nhelo = "tester.example"\ntimeout = -1\n')
    r = rg(f"127.0.0.1:{port}", "--json", cwd=tmp_path)
    assert r.returncode == 2
    assert "configuration error:\nrelayguard.toml:3: relaytest.timeout: Input should be greater than 0" in r.stderr
    config.write_text("[relaytest\n")
    r = rg(f"127.0.0.1:{port}", "--json", cwd=tmp_path)
    assert r.returncode == 2 and "configuration error:\nrelayguard.toml: " in r.stderr, r.stderr
