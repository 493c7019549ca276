"""A TCP proxy between the service and PostgreSQL that misbehaves on command.

    proxy = FaultProxy("127.0.0.1", pg_port)
    port = await proxy.start()          # point the service's DSN at this port
    proxy.latency = 0.05                # seconds added to every chunk, both ways
    proxy.blackhole()                   # nothing passes, new connections hang; heal() ends it
    proxy.refuse = True                 # new connections are reset at once
    proxy.drop_all()                    # every open connection is cut
    proxy.lose_next_reply()             # the next connection that sends something gets it
                                        # executed, then loses the answer and is cut
    await proxy.stop()

A black hole holds data rather than discarding it: what was sent during it arrives when it is
healed, like a network that stalled (so a request the client gave up on may still run later:
exactly the ambiguity the idempotency record exists for).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    doomed: bool = False  # lose_next_reply picked this connection

    def abort(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None:
                writer.transport.abort()


@dataclass
class ProxyStats:
    connections: int = 0
    refused: int = 0
    dropped: int = 0
    lost_replies: int = 0


@dataclass(eq=False)
class FaultProxy:
    upstream_host: str
    upstream_port: int
    host: str = "127.0.0.1"
    port: int = 0
    latency: float = 0.0
    refuse: bool = False
    stats: ProxyStats = field(default_factory=ProxyStats)

    def __post_init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._links: set[_Link] = set()
        self._lose_next = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen; returns the port."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()
        self.drop_all()
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=5)
            for task in late:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- faults ----------------------------------------------------------------------------

    def blackhole(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    @property
    def blackholed(self) -> bool:
        return not self._open.is_set()

    def drop_all(self) -> None:
        for link in list(self._links):
            link.abort()
            self.stats.dropped += 1
        self._links.clear()

    def lose_next_reply(self) -> None:
        self._lose_next = True

    # -- plumbing --------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()  # stop() gave up waiting for this one
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            self.stats.refused += 1
            writer.transport.abort()
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._open.wait()
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
            except OSError:
                writer.transport.abort()
                return
            link.server = up_writer
            self.stats.connections += 1
            await asyncio.gather(
                self._pump(reader, up_writer, link, from_server=False),
                self._pump(up_reader, writer, link, from_server=True),
            )
        finally:
            link.abort()
            self._links.discard(link)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        *,
        from_server: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if self.latency:
                    await asyncio.sleep(self.latency)
                await self._open.wait()
                if not from_server and self._lose_next:
                    self._lose_next = False
                    link.doomed = True
                elif from_server and link.doomed:
                    # the server did the work and answered; the client never hears of it
                    self.stats.lost_replies += 1
                    link.abort()
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            link.abort()
