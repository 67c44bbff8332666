"""A real `redis-server` for tests: on 127.0.0.1, a free port, its own directory; stopped, killed and
restarted (same port, same directory) at will."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

MISSING = (
    "redis-server is not on PATH: the session store tests need a real Redis "
    "(`make install-redis`, or `apt-get install redis-server`)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process. `url` is where it listens; `appendonly` keeps its data over restarts."""

    def __init__(self, directory: Path, *, appendonly: bool = False, port: int | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(MISSING)
        self.binary = binary
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self._fixed_port = port is not None
        self.port = port or _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def start(self, timeout_s: float = 15.0) -> None:
        """Start it and wait until it answers PING (after loading its data, with `appendonly`). A port taken
        meanwhile by someone else is replaced by another free one, unless the port was given or this is a
        restart."""
        assert self.process is None, "already running"
        for _ in range(5):
            if self._start_once(timeout_s):
                self._fixed_port = True  # restarts keep this port
                return
            if self._fixed_port or "Address already in use" not in self._log_tail():
                break
            self.port = _free_port()
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{self._log_tail()}")

    def _start_once(self, timeout_s: float) -> bool:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--save", "", "--appendonly", "yes" if self.appendonly else "no", "--daemonize", "no"]
        args += ["--logfile", str(self.log)]
        with open(self.directory / "redis.stderr", "ab") as stderr:
            self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            if self.ping():
                return True
            time.sleep(0.02)
        self.kill()
        return False

    def ping(self) -> bool:
        """Whether it answers PING with PONG now (not while it loads its data)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (Redis flushes its append-only file) and wait; SIGKILL if it does not exit in time."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL and wait: what a crash looks like."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop (if running) and start again on the same port and directory."""
        self.stop()
        self.start()

    def _log_tail(self) -> str:
        text = ""
        for path in (self.directory / "redis.stderr", self.log):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")[-2000:]
        return text

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
