"""A small Server-Sent Events reader for the stream tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass
class Event:
    event: str | None
    id: str | None
    data: str
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return orjson.loads(self.data)


class EventReader:
    """Reads events off an SSE response; comments (heartbeats) are kept with the next event."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def line(self, within: float) -> str | None:
        raw = await asyncio.wait_for(self.response.content.readline(), within)
        if not raw:
            return None  # end of stream
        return raw.decode().rstrip("\r\n")

    async def next(self, within: float = 5.0) -> Event | None:
        """The next event, None at the end of the stream; TimeoutError when none comes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        fields: dict[str, list[str]] = {}
        while True:
            line = await self.line(max(deadline - loop.time(), 0.001))
            if line is None:
                return None
            if line == "":
                if fields:
                    retry = fields.get("retry")
                    return Event(
                        event=fields.get("event", [None])[-1],
                        id=fields.get("id", [None])[-1],
                        data="\n".join(fields.get("data", [])),
                        retry=int(retry[-1]) if retry else None,
                        comments=self.comments,
                    )
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)


def numbers(stats: dict[str, Any]) -> dict[str, Any]:
    """A stats body without its timestamp, to compare two snapshots."""
    return {k: v for k, v in stats.items() if k != "as_of"}
