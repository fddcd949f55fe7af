"""Open-relay testing: the trick catalogue (pure data), reply parser, prober, canary and verdicts.

The API other capabilities use (the DNSBL service among them) is re-exported here:
`RelayTestOptions`, `check_target` (one target, async), `run_async` / `run` (many targets),
`TargetResult` / `CaseResult` / `Outcome` / `Verdict`, and the canaries `CanaryReceiver` and
`MaildirWatcher`. See prober.py's docstring for how a target is tested.
"""

from .canary import Canary, CanaryReceiver, MaildirWatcher
from .prober import RelayTestOptions, check_target, make_canary, new_result, parse_target, read_targets, run, run_async
from .result import CaseResult, Outcome, SmuggleResult, TargetResult, Verdict

__all__ = [
    "Canary", "CanaryReceiver", "MaildirWatcher", "RelayTestOptions", "check_target", "make_canary", "new_result",
    "parse_target", "read_targets", "run", "run_async", "CaseResult", "Outcome", "SmuggleResult", "TargetResult",
    "Verdict",
]
