#!/usr/bin/env python3
"""Received fields parsed per second: SpamAssassin's corpus (145 fields) repeated, and a set of
today's formats, each run several times; the best run counts. Target (issue 7): >= 20,000/s.

Run: .venv/bin/python bench/received_parse.py [--rounds N] [--repeat N]. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from relayguard.trace import parse_received  # noqa: E402

TARGET = 20_000
CORPUS = ROOT.parent / "shared" / "corpus" / "received" / "spamassassin_rcvd_parser.json"
CURRENT = [
    "from mail-out.example.com (mail-out.example.com [198.51.100.23]) (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 "
    "(256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256) (No client "
    "certificate requested) by mx.example.org (Postfix) with ESMTPS id 4TABC12xyz; Mon,  8 Jan 2024 10:11:12 +0000 (UTC)",
    "from mail-ed1-f41.google.com ([209.85.208.41]:45678) by mx.example.org with esmtps  (TLS1.3) tls "
    "TLS_AES_128_GCM_SHA256 (Exim 4.96) (envelope-from <someone@gmail.com>) id 1rNabc-000XyZ-2F for bob@example.org; "
    "Mon, 08 Jan 2024 10:00:00 +0000",
    "from client.example.com (client.example.com [198.51.100.7]) by mail.example.org (8.17.1/8.17.1) with ESMTPS id "
    "40AB2cD3012345 (version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256 verify=NOT) for <bob@example.org>; "
    "Wed, 10 Jan 2024 09:15:00 -0500",
    "from unknown (HELO client.example.net) (198.51.100.44) by mail.example.org with SMTP; 10 Jan 2024 14:15:00 -0000",
    "from mail-ot1-f41.google.com (209.85.210.41) by BN8NAM11FT012.mail.protection.outlook.com (10.13.176.114) with "
    "Microsoft SMTP Server (version=TLS1_3, cipher=TLS_AES_256_GCM_SHA384) id 15.20.7181.14 via Frontend Transport; "
    "Mon, 8 Jan 2024 10:00:00 +0000",
    "from mail-sor-f41.google.com (mail-sor-f41.google.com. [209.85.220.41]) by mx.google.com with SMTPS id "
    "a640c23a62f3a-a2c1234567sor1234567.13.2024.01.08.02.00.00 for <user@gmail.com> (Google Transport Security); "
    "Mon, 08 Jan 2024 02:00:00 -0800 (PST)",
    "from laptop (client.example.net [198.51.100.1]) (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)) "
    "by mx.relayguard.test (relayguard) with ESMTPSA id Q1a2B3 for <bob@example.org>; Mon, 08 Jan 2024 10:00:05 +0200",
]


def rate(fields: list[str], repeat: int, rounds: int) -> float:
    work = fields * repeat
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for value in work:
            parse_received(value)
        best = min(best, time.perf_counter() - start)
    return len(work) / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=100)
    args = ap.parse_args()
    corpus = [c["header"] for c in json.loads(CORPUS.read_text())["cases"]]
    rows = [("SpamAssassin corpus", len(corpus), rate(corpus, args.repeat, args.rounds)),
            ("current MTA formats", len(CURRENT), rate(CURRENT, args.repeat * 20, args.rounds))]
    print(f"{'fields':<22}{'distinct':>9}{'parsed/s':>12}{'target':>10}  verdict")
    ok = True
    for name, n, r in rows:
        ok &= r >= TARGET
        print(f"{name:<22}{n:>9}{r:>12,.0f}{TARGET:>10,}  {'ok' if r >= TARGET else 'BELOW TARGET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
