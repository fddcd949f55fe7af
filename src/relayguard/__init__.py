"""relayguard: a relay-safe mail server and the anti-spam tools around it."""

__version__ = "0.1.0"
