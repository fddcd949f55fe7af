"""A private Postfix instance on loopback for tests (REFERENCES.md section 6): start, log, stop.

Subclasses write `conf/main.cf` and `conf/master.cf` under `root`, set `port` (their smtpd),
then call `start()`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"


class PostfixInstance:
    root: Path
    conf: Path
    port: int

    def start(self) -> None:
        """`postfix start-fg` in its own session; returns once its smtpd accepts connections."""
        self.proc = subprocess.Popen([POSTFIX, "-c", str(self.conf), "start-fg"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"postfix did not start: {self.log()}") from None
                time.sleep(0.1)

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.conf), "stop"], capture_output=True, timeout=30)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
