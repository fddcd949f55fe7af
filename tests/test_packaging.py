"""Packaging (issue 9): `python -m build --wheel` gives a wheel that holds the web templates and
static files and the Alembic migrations, and whose console script works in a clean venv
(dependencies from the package index): `relayguard --help`, `init`, `check-config`, and a
DNSBL store created through the wheel's own migrations.

The source is copied first, so the build leaves no build/ or *.egg-info in the working tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)


def run(*args: object, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("build")
    source = work / "src-copy"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis",
        "tests", "bench", "node_modules"))
    run(sys.executable, "-m", "build", "--wheel", "--outdir", work / "dist", source, timeout=240)
    (found,) = (work / "dist").glob("relayguard-*.whl")
    return found


def test_wheel_holds_templates_static_and_migrations(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    web = ROOT / "src" / "relayguard" / "web"
    for folder in ("templates", "static"):
        for f in (web / folder).iterdir():
            assert f"relayguard/web/{folder}/{f.name}" in names, f"{folder}/{f.name} missing from the wheel"
    versions = ROOT / "src" / "relayguard" / "dnsbl" / "migrations" / "versions"
    assert "relayguard/dnsbl/migrations/env.py" in names
    for f in versions.glob("*.py"):
        assert f"relayguard/dnsbl/migrations/versions/{f.name}" in names
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "Requires-Dist: prometheus-client" in zipfile.ZipFile(wheel).read(meta).decode()


def test_console_script_in_a_clean_venv(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    bin_ = venv / "bin"
    run(bin_ / "python", "-m", "pip", "install", "-q", wheel, timeout=240)
    where = run(bin_ / "python", "-c", "import relayguard; print(relayguard.__file__)", cwd=tmp_path).stdout
    assert where.startswith(str(venv)), where  # the wheel's copy, not the source tree

    help_text = run(bin_ / "relayguard", "--help", cwd=tmp_path).stdout
    for command in ("serve", "init", "status", "check-config", "relaytest", "dnsbl", "queue", "user"):
        assert command in help_text, command

    site = tmp_path / "site"
    run(bin_ / "relayguard", "init", site, "--hostname", "mx.example.test", cwd=tmp_path)
    assert (site / "relayguard.toml").is_file() and (site / "var" / "tls" / "cert.pem").is_file()
    checked = run(bin_ / "relayguard", "check-config", "-c", "relayguard.toml", cwd=site).stdout
    assert "valid" in checked
    # the store is created by the wheel's Alembic migrations
    run(bin_ / "relayguard", "dnsbl", "add", "192.0.2.0/24", "--reason", "packaging test", "-c", "relayguard.toml",
        cwd=site)
    listed = run(bin_ / "relayguard", "dnsbl", "entries", "--json", "-c", "relayguard.toml", cwd=site).stdout
    assert '"192.0.2.0/24"' in listed
