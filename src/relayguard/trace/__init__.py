"""Trace a message to its origin: Received parser, trust chain, abuse contacts, ARF reports.

`parse_received` and `analyse` are pure; contact lookups and listings sit behind small
interfaces (`relayguard.trace.contacts`, `relayguard.trace.investigate`) so that the network
stays at the edge.
"""

from .chain import Chain, Finding, Relay, TrustConfig, analyse, analyse_message
from .received import Hop, classify_received, parse_received

__all__ = ["Chain", "Finding", "Hop", "Relay", "TrustConfig", "analyse", "analyse_message", "classify_received",
           "parse_received"]
