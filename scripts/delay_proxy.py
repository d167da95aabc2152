#!/usr/bin/env python3
"""A TCP proxy that adds a round-trip time and nothing else: what puts the
benchmark's S3 server (scripts/bench_bucket.py) "far away".

Usage:
    python3 scripts/delay_proxy.py --listen HOST:PORT --target HOST:PORT
                                   --rtt-ms 30 [--handshake-rtts 1]

Each chunk read from one side is written to the other half a round trip
later, in both directions, and the next chunks are read meanwhile: chunks
are delayed, not serialised, so the proxy adds latency without capping
throughput (a chunk read at time t is written at t + rtt/2, whatever is in
flight; up to ``--max-buffer`` bytes per direction, then the side that
sends is held back, as a full TCP window would hold it).

A new connection costs round trips before its first byte, as it does over
a real link: the proxy accepts at once (it is one hop away), but forwards
the client's first bytes no earlier than ``handshake_rtts`` round trips
after the accept (plus the half round trip of every chunk). 1 is TCP's
handshake; 2 adds TLS 1.3's, as an https endpoint costs.

When listening, it prints ``listening on HOST:PORT`` on stdout (the port
the kernel chose, with port 0), then serves until SIGTERM or SIGINT.

Python 3.11+, standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

CHUNK = 256 << 10  # bytes read at once
MAX_BUFFER = 64 << 20  # bytes in flight per direction before the sender waits


class _Budget:
    """Bytes in flight in one direction, with a bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.changed = asyncio.Condition()

    async def take(self, n: int) -> None:
        async with self.changed:
            # One chunk always fits, however big, so a chunk never waits
            # for itself.
            await self.changed.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    async def give(self, n: int) -> None:
        async with self.changed:
            self.used -= n
            self.changed.notify_all()


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: float,
    not_before: float,
    max_buffer: int,
) -> None:
    """Copies ``reader`` to ``writer``, each chunk ``delay`` seconds after
    it was read and none before ``not_before`` (loop time)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
    budget = _Budget(max_buffer)

    async def read() -> None:
        last = not_before
        try:
            while data := await reader.read(CHUNK):
                await budget.take(len(data))
                last = max(last, loop.time() + delay)
                queue.put_nowait((last, data))
        except (ConnectionError, OSError):
            pass
        queue.put_nowait((max(last, loop.time() + delay), None))

    async def write() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                if writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            await budget.give(len(data))

    reading = asyncio.create_task(read())
    try:
        await write()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


class DelayProxy:
    """The proxy, in an event loop of the caller's (the tests run it in
    process; the benchmark runs this file as a process in a namespace)."""

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        rtt: float,
        handshake_rtts: int = 1,
        max_buffer: int = MAX_BUFFER,
    ) -> None:
        self.listen = listen
        self.target = target
        self.rtt = rtt
        self.handshake_rtts = handshake_rtts
        self.max_buffer = max_buffer
        self.server: asyncio.base_events.Server | None = None
        self.connections: set[asyncio.Task] = set()

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None, "the proxy is not started"
        return self.server.sockets[0].getsockname()[:2]

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, *self.listen)

    async def close(self) -> None:
        # Connections first: from Python 3.12 on, wait_closed() waits for
        # them.
        if self.server is not None:
            self.server.close()
        for task in list(self.connections):
            task.cancel()
        for task in list(self.connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.server is not None:
            await self.server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.connections.add(task)
        try:
            await self._relay(client_r, client_w)
        except asyncio.CancelledError:
            # close(): the task ends normally (Python 3.11's streams log a
            # cancelled connection task as an error).
            pass
        finally:
            self.connections.discard(task)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        accepted = asyncio.get_running_loop().time()
        target_w = None
        try:
            target_r, target_w = await asyncio.open_connection(*self.target)
            half = self.rtt / 2
            first_byte = accepted + self.handshake_rtts * self.rtt + half
            # One direction ending (a half-close) leaves the other going; a
            # failure in either ends both.
            async with asyncio.TaskGroup() as group:
                group.create_task(_pump(client_r, target_w, half, first_byte, self.max_buffer))
                group.create_task(_pump(target_r, client_w, half, accepted, self.max_buffer))
        except* (ConnectionError, OSError):
            pass
        finally:
            for w in (client_w, target_w):
                if w is not None:
                    w.close()
                    with contextlib.suppress(ConnectionError, OSError):
                        await w.wait_closed()


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def serve(args: argparse.Namespace) -> None:
    proxy = DelayProxy(
        args.listen, args.target, args.rtt_ms / 1000, args.handshake_rtts, args.max_buffer
    )
    await proxy.start()
    host, port = proxy.address
    print(f"listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A TCP proxy that adds a round-trip time.")
    p.add_argument("--listen", type=parse_address, required=True, metavar="HOST:PORT")
    p.add_argument("--target", type=parse_address, required=True, metavar="HOST:PORT")
    p.add_argument("--rtt-ms", type=float, required=True, help="round trip added, in ms")
    p.add_argument(
        "--handshake-rtts",
        type=int,
        default=1,
        help="round trips a new connection costs before its first byte (default 1: TCP)",
    )
    p.add_argument("--max-buffer", type=int, default=MAX_BUFFER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rtt_ms < 0 or args.handshake_rtts < 0:
        p.error("--rtt-ms and --handshake-rtts must not be negative")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
