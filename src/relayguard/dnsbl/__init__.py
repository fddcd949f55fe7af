"""The DNS blacklist: zone model, DNS wire format, DNS server (and, later, store and lifecycle)."""
