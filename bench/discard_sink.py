"""The aiosmtpd baseline for bench/run.py: accept every message and throw it away."""

import asyncio
import signal
import sys

from aiosmtpd.controller import Controller


class Discard:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 Ok: discarded"


async def main(port: int) -> None:
    controller = Controller(Discard(), hostname="127.0.0.1", port=port)
    controller.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    controller.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
