"""Checks of scripts/delay_proxy.py, the round trip the bucket benchmark
puts between its builds and the S3 server: it adds what it is told (a few
ms of slack for a loaded machine, never less), a new connection pays its
handshake, and the delay does not cap throughput.

Run by hand: python3 scripts/check_delay_proxy.py (not part of
scripts/test.sh: its bounds are a few ms, which a loaded machine may miss).
Loopback only; the proxy runs as the benchmark runs it, a process.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import unittest
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "delay_proxy.py"
# How much later than asked a loaded 2-core machine may deliver (timers,
# scheduling, two Python processes in the path).
SLACK = 0.008


class EchoServer:
    """Echoes what each connection sends, on a thread."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


class Proxy:
    """scripts/delay_proxy.py as a process, in front of ``port``."""

    def __init__(self, port: int, rtt_ms: float, handshake_rtts: int = 1) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--listen", "127.0.0.1:0"]
            + ["--target", f"127.0.0.1:{port}", "--rtt-ms", str(rtt_ms)]
            + ["--handshake-rtts", str(handshake_rtts)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.close()
            raise AssertionError(f"the proxy said {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def round_trip(sock: socket.socket) -> float:
    t0 = time.perf_counter()
    sock.sendall(b"x")
    if sock.recv(1) != b"x":
        raise AssertionError("the echo did not come back")
    return time.perf_counter() - t0


class DelayProxyTest(unittest.TestCase):
    def setUp(self) -> None:
        self.echo = EchoServer()
        self.addCleanup(self.echo.close)

    def proxy(self, rtt_ms: float, handshake_rtts: int = 1) -> Proxy:
        proxy = Proxy(self.echo.port, rtt_ms, handshake_rtts)
        self.addCleanup(proxy.close)
        return proxy

    def test_a_round_trip_takes_the_rtt_asked_for(self) -> None:
        for rtt_ms in (10, 30):
            with self.subTest(rtt_ms=rtt_ms):
                proxy = self.proxy(rtt_ms)
                with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    round_trip(sock)  # the connection's handshake
                    median = statistics.median(round_trip(sock) for _ in range(9))
                rtt = rtt_ms / 1000
                self.assertGreaterEqual(median, rtt)
                self.assertLess(median, rtt + SLACK, f"median round trip {median * 1e3:.1f} ms")

    def test_a_new_connection_pays_its_handshakes(self) -> None:
        for handshake_rtts in (1, 2):
            with self.subTest(handshake_rtts=handshake_rtts):
                proxy = self.proxy(20, handshake_rtts)
                t0 = time.perf_counter()
                with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
                    round_trip(sock)
                first = time.perf_counter() - t0
                expected = 0.020 * (1 + handshake_rtts)
                self.assertGreaterEqual(first, expected)
                self.assertLess(first, expected + SLACK, f"first byte after {first * 1e3:.1f} ms")

    def test_the_delay_does_not_cap_throughput(self) -> None:
        """64 MiB through a 30 ms proxy each way: were chunks serialised
        (one 256 KiB chunk per 15 ms), it would take over 3.7 s; in
        flight, it takes the copying time plus one delay. The bar, 40 MB/s
        (320 Mbit/s), is above the benchmark's 200 Mbit/s link."""
        proxy = self.proxy(30)
        size = 64 << 20
        block = os.urandom(1 << 20)
        received = 0
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            round_trip(sock)  # connected, handshake paid

            def send() -> None:
                for _ in range(size // len(block)):
                    sock.sendall(block)

            t0 = time.perf_counter()
            sender = threading.Thread(target=send)
            sender.start()
            while received < size:
                data = sock.recv(1 << 20)
                if not data:
                    break
                received += len(data)
            elapsed = time.perf_counter() - t0
            sender.join()
        self.assertEqual(received, size)
        rate = size / (elapsed - 0.030)
        self.assertGreater(rate, 40e6, f"{rate / 1e6:.0f} MB/s through the proxy")


if __name__ == "__main__":
    unittest.main()
