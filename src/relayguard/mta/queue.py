"""The outbound queue's record of one message and the pure rules that move it along.

One JSON record per message (`queue/<id>.json`, beside `queue/<id>.msg`) with a state per
recipient, so a message to several domains is delivered, retried and bounced per recipient, and
a restart resumes exactly where the last durable update left it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

PENDING, SENT, FAILED = "pending", "sent", "failed"
STATES = (PENDING, SENT, FAILED)


class CorruptEntry(ValueError):
    """A queue record that cannot be read; the queue moves it aside instead of crashing."""


@dataclass
class Recipient:
    address: str
    state: str = PENDING
    reply: str = ""  # the last reply or error, e.g. "550 5.1.1 <x@y>: User unknown"
    status: str = ""  # enhanced status for DSNs, e.g. "5.1.1"
    remote_mta: str = ""
    reported: bool = False  # a DSN for this failure was queued


@dataclass
class QueueEntry:
    queue_id: str
    mail_from: str  # "" for the null sender (a bounce: never bounced itself)
    recipients: list[Recipient]
    received: float  # arrival (Unix time); the lifetime counts from here
    client_ip: str = ""
    helo: str = ""
    identity: str = ""
    attempts: int = 0
    next_attempt: float = 0.0
    held: bool = False
    warned: bool = False

    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.state == PENDING]

    def recipient(self, address: str) -> Recipient | None:
        return next((r for r in self.recipients if r.address == address), None)

    def to_json(self) -> dict[str, Any]:
        """What dataclasses.asdict gives (every field, recipients as dicts), without its deep copy."""
        return {**self.__dict__, "recipients": [dict(r.__dict__) for r in self.recipients]}

    @classmethod
    def from_json(cls, data: Any) -> QueueEntry:
        try:
            rcpts = [Recipient(**r) for r in data["recipients"]]
            entry = cls(**{**data, "recipients": rcpts})
        except (TypeError, KeyError) as e:
            raise CorruptEntry(f"bad queue record: {e}") from None
        if not entry.queue_id or not rcpts or any(r.state not in STATES for r in rcpts):
            raise CorruptEntry("bad queue record: missing id, recipients or unknown state")
        return entry


@dataclass(frozen=True)
class Outcome:
    """One recipient's result of one delivery attempt."""

    state: str  # SENT, FAILED (permanent) or PENDING (temporary failure)
    reply: str
    status: str
    remote_mta: str = ""


@dataclass(frozen=True)
class Schedule:
    min_backoff: float
    max_backoff: float
    max_lifetime: float


def backoff(attempts: int, schedule: Schedule, rng: random.Random | None = None) -> float:
    """Doubling delay from min to max backoff, +-25% jitter so retries of a burst spread out."""
    base = min(schedule.max_backoff, schedule.min_backoff * 2 ** max(0, attempts - 1))
    jitter = 0.75 + 0.5 * (rng or random).random()
    return max(schedule.min_backoff, min(schedule.max_backoff, base * jitter))


def apply_outcomes(entry: QueueEntry, outcomes: dict[str, Outcome]) -> None:
    """Record results; a recipient already sent or failed never changes again."""
    for address, outcome in outcomes.items():
        r = entry.recipient(address)
        if r is None or r.state != PENDING:
            continue
        r.state, r.reply, r.status, r.remote_mta = outcome.state, outcome.reply, outcome.status, outcome.remote_mta


def finish_attempt(entry: QueueEntry, now: float, schedule: Schedule, rng: random.Random | None = None) -> None:
    """After an attempt: schedule the next one, or expire what is still pending."""
    entry.attempts += 1
    if entry.pending() and now - entry.received >= schedule.max_lifetime:
        for r in entry.pending():
            r.state = FAILED
            r.status = r.status if r.status.startswith("4.") else "4.4.7"
            r.reply = f"delivery time expired; last error: {r.reply or 'none'}"
    entry.next_attempt = now + backoff(entry.attempts, schedule, rng) if entry.pending() else 0.0


def settled_by(entry: QueueEntry, outcomes: dict[str, Outcome]) -> bool:
    """True when, with these outcomes, no recipient is left pending and no failure is left to
    report: the entry can go as it is, without reading or saving its record again."""
    for r in entry.recipients:
        state = outcomes[r.address].state if r.state == PENDING and r.address in outcomes else r.state
        if state == PENDING or (state == FAILED and not (r.reported and r.state == FAILED)):
            return False
    return True


def unreported_failures(entry: QueueEntry) -> list[Recipient]:
    """Failed recipients whose sender has not been told yet."""
    return [r for r in entry.recipients if r.state == FAILED and not r.reported]


def needs_delay_warning(entry: QueueEntry, now: float, after: float) -> bool:
    return bool(after) and not entry.warned and bool(entry.mail_from) and bool(entry.pending()) and now - entry.received >= after
