"""SIGHUP reloads without dropping sessions; SIGTERM drains sessions in flight and exits 0."""

from __future__ import annotations

import signal
import smtplib
import time

from conftest import free_port, start_server


def wait_log(srv, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in srv.log():
        assert time.monotonic() < deadline, srv.log()
        time.sleep(0.05)


def test_sighup_reloads_listeners_and_domains_without_dropping_a_session(tmp_path):
    srv = start_server(tmp_path / "srv")
    try:
        session = smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=10)
        session.ehlo("client.example")
        assert session.docmd("MAIL", "FROM:<a@remote.test>")[0] == 250
        assert session.docmd("RCPT", "TO:<postmaster@new.test>")[0] == 554  # not ours yet
        new_port = free_port()
        cfg = srv.root / "relayguard.toml"
        text = cfg.read_text()
        text = text.replace(f'listen = ["127.0.0.1:{srv.smtp_port}"]', f'listen = ["127.0.0.1:{new_port}"]')
        text = text.replace('local = ["localhost", "example.test"]', 'local = ["localhost", "example.test", "new.test"]')
        cfg.write_text(text)
        srv.proc.send_signal(signal.SIGHUP)
        wait_log(srv, "event=reloaded")
        # the session that was open goes on, under the new rules
        assert session.docmd("RCPT", "TO:<postmaster@new.test>")[0] == 250
        session.quit()
        with smtplib.SMTP("127.0.0.1", new_port, timeout=10) as smtp:
            assert smtp.sendmail("a@remote.test", ["postmaster@new.test"], b"Subject: x\r\n\r\nx\r\n") == {}
        try:
            smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=3).quit()
            raise AssertionError("the old listener should be closed")
        except OSError:
            pass
        cfg.write_text(text + "\n[smtp]\nbroken = 1\n")  # a bad file is refused; the old settings stay
        srv.proc.send_signal(signal.SIGHUP)
        wait_log(srv, "event=reload-refused")
        with smtplib.SMTP("127.0.0.1", new_port, timeout=10) as smtp:
            assert smtp.noop()[0] == 250
    finally:
        srv.stop()


def test_sigterm_lets_a_session_in_flight_finish(tmp_path):
    srv = start_server(tmp_path / "srv")
    session = smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=10)
    session.ehlo("client.example")
    session.docmd("MAIL", "FROM:<a@remote.test>")
    session.docmd("RCPT", "TO:<postmaster@localhost>")
    srv.proc.send_signal(signal.SIGTERM)
    wait_log(srv, "event=stopping")
    try:
        smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=3).quit()
        raise AssertionError("no new sessions while draining")
    except OSError:
        pass
    assert session.docmd("DATA")[0] == 354
    session.send(b"Subject: drained\r\n\r\nfinished during shutdown\r\n.\r\n")
    assert session.getreply()[0] == 250
    session.quit()
    assert srv.proc.wait(20) == 0
    assert any(b"finished during shutdown" in m for m in srv.messages("postmaster"))
