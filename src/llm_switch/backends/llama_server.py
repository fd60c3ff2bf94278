"""llama-server's HTTP API as the switch uses it: one client session per backend URL, `/health`,
and which model a server says it serves."""

from __future__ import annotations

import aiohttp

_QUIET = (aiohttp.ClientError, TimeoutError, OSError)


class Backends:
    """One HTTP client session per backend URL.

    Before a model is stopped its idle keep-alive connections are closed: llama-server's shutdown
    waits for them (it looks at idle sockets only every few milliseconds)."""

    def __init__(self) -> None:
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def session(self, url: str) -> aiohttp.ClientSession:
        session = self._sessions.get(url)
        if session is None or session.closed:
            # limit=0: streaming clients each hold a connection; llama-server queues beyond its slots
            session = self._sessions[url] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent"))
        return session

    async def close(self, url: str) -> None:
        if (session := self._sessions.pop(url, None)) is not None:
            await session.close()

    async def close_all(self) -> None:
        for url in list(self._sessions):
            await self.close(url)

    async def health(self, url: str, timeout: float) -> int | None:
        """The status of `url`/health (llama-server: 503 while loading, 200 when ready), or None
        when nothing answered."""
        try:
            async with self.session(url).get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                await r.read()
                return r.status
        except _QUIET:
            return None

    async def model_ids(self, url: str, timeout: float = 5.0) -> set[str] | None:
        """The model ids `url`/v1/models lists (llama-server: its --alias), or None when it does not tell."""
        try:
            async with self.session(url).get(f"{url}/v1/models", timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                data = await r.json(content_type=None)
            return {str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)}
        except (*_QUIET, ValueError, AttributeError, RecursionError):
            return None
