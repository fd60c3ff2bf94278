"""A plain TCP forwarder, the reference for the relay's own cost (bench/run.py, --relay-backends).

    python bench/tcp_forward.py LISTEN_PORT UPSTREAM_PORT

Each accepted connection gets a new connection to 127.0.0.1:UPSTREAM_PORT and the bytes are
copied both ways: no HTTP parsing, one asyncio loop (uvloop's, as the daemon's), as little work
per byte as Python allows.
A client that opens a new connection per request thus costs the backend what the switch costs
it (a new upstream connection per request: docs/design.md).
"""

from __future__ import annotations

import asyncio
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def main(listen: int, upstream: int) -> None:
    async def accept(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(pipe(cr, uw), pipe(ur, cw))

    server = await asyncio.start_server(accept, "127.0.0.1", listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop  # the daemon's dependency

    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
