"""A scripted OpenAI-compatible backend: replays what a script says, records what it saw.

Run it like a llama-server (and so as a unit's ExecStart)::

    python tests/support/scripted_backend.py --port N --script FILE.json [--record FILE.jsonl]

It binds 127.0.0.1 only. Script format (JSON; every key optional)::

    {
      "model": "scripted",          # id in GET /v1/models (default "scripted")
      "health": "ok",               # GET /health: "ok" -> 200 {"status":"ok"};
                                    #   "fail" -> 503 forever (llama-server's "Loading model");
                                    #   {"ok_after": 2.5} -> 503 until 2.5 s after start, then 200
      "routes": {                   # path -> one step, or a list used in turn (the last repeats)
        "/v1/chat/completions": [STEP, STEP, ...],
        "*": STEP                   # any other path (default: 404 JSON error)
      }
    }

A STEP is one response::

    {"delay": 0.5}                          # wait before answering (any step)
    {"status": 200, "json": {...}}          # JSON body (status default 200)
    {"status": 500, "body": "text", "content_type": "text/plain"}   # raw body
    {"headers": {"X-A": "b"}}               # extra response headers (any step)
    {"stall": true}                         # never answer (until the client goes away)
    {"exit": true}                          # the process dies at once, no answer (os._exit(1))
    {"echo": true}                          # 200, JSON: {"path","query","headers","body"} of the request
    {"sse": [EVENT, ...],                   # text/event-stream, one EVENT per chunk:
     "interval": 0.1,                       #   seconds between chunks (default 0)
     "done": true,                          #   append "data: [DONE]" (default true)
     "then": "end"}                         #   after the events: "end" (default) | "stall"
                                            #   (keep the stream open, send nothing) | "close"
                                            #   (drop the connection) | "exit" (process dies)

An EVENT is a dict (sent as ``data: <json>\\n\\n``), a string (sent as ``data: <string>\\n\\n``),
or ``{"raw": "..."}`` (sent byte for byte). ``"sse": {"repeat": EVENT, "count": 50}`` is 50
copies of one event. A dict event may contain the string "{i}" in values; it is replaced by
the chunk index.

GET /v1/models and GET /health are answered from "model" and "health" unless "routes" names
them; GET /props (the switch asks it for the prompt cache) answers 404, unrecorded, unless
"routes" names it. With ``--record FILE`` every event is appended as one JSON line, flushed at once::

    {"event": "start", "pid": 123, "port": N, "t": unix}           # process started
    {"event": "request", "n": 1, "method": "POST", "path": "/v1/chat/completions",
     "raw": "/v1/chat/completions" (the target as sent), "query": "", "headers": {...},
     "body": <parsed JSON or text>, "t": unix}
    {"event": "chunk", "n": 1, "i": 0, "t": unix}                  # SSE chunk i was written
    {"event": "complete", "n": 1, "t": unix}                       # response fully written
    {"event": "disconnect", "n": 1, "i": 3, "t": unix}            # client went away mid-response
    {"event": "health", "status": 503, "t": unix}                  # each GET /health

``n`` numbers requests from 1 (health and model listing are not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

DEFAULT_MODEL = "scripted"


class Recorder:
    def __init__(self, path: str | None) -> None:
        self._file = open(path, "a", buffering=1) if path else None  # noqa: SIM115

    def __call__(self, event: str, **fields: Any) -> None:
        if self._file is None:
            return
        fields = {"event": event, **fields, "t": time.time()}
        self._file.write(json.dumps(fields) + "\n")
        self._file.flush()


def _fill(value: Any, i: int) -> Any:
    if isinstance(value, str):
        return value.replace("{i}", str(i))
    if isinstance(value, dict):
        return {k: _fill(v, i) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, i) for v in value]
    return value


def _encode_event(event: Any, i: int) -> bytes:
    if isinstance(event, dict) and set(event) == {"raw"}:
        return str(event["raw"]).encode()
    if isinstance(event, str):
        return f"data: {event}\n\n".encode()
    return f"data: {json.dumps(_fill(event, i))}\n\n".encode()


def _events(step: dict) -> list[Any]:
    sse = step["sse"]
    if isinstance(sse, dict):
        return [sse["repeat"]] * int(sse.get("count", 1))
    return list(sse)


class Backend:
    def __init__(self, script: dict, port: int, record: Recorder) -> None:
        self.script = script
        self.port = port
        self.record = record
        self.started = time.monotonic()
        self.turns: dict[str, int] = {}
        self.count = 0

    # -- script lookup

    def _step(self, path: str) -> dict | None:
        routes = self.script.get("routes", {})
        key = path if path in routes else "*" if "*" in routes else None
        if key is None:
            return None
        steps = routes[key]
        if isinstance(steps, dict):
            return steps
        turn = self.turns.get(key, 0)
        self.turns[key] = turn + 1
        return steps[min(turn, len(steps) - 1)]

    def _health_status(self) -> int:
        health = self.script.get("health", "ok")
        if health == "ok":
            return 200
        if health == "fail":
            return 503
        if isinstance(health, dict) and "ok_after" in health:
            return 200 if time.monotonic() - self.started >= float(health["ok_after"]) else 503
        raise ValueError(f"bad health in script: {health!r}")

    # -- handlers

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        routes = self.script.get("routes", {})
        if request.method == "GET" and path == "/health" and path not in routes:
            status = self._health_status()
            self.record("health", status=status)
            if status == 200:
                return web.json_response({"status": "ok"})
            return web.json_response(
                {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
                status=503)
        if request.method == "GET" and path == "/v1/models" and path not in routes:
            model = self.script.get("model", DEFAULT_MODEL)
            return web.json_response({"object": "list", "data": [
                {"id": model, "object": "model", "created": 0, "owned_by": "scripted"}]})

        if request.method == "GET" and path == "/props" and path not in routes:
            return web.json_response({"error": {"message": "not a llama-server", "type": "not_found", "code": 404}},
                                     status=404)

        self.count += 1
        n = self.count
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.record("request", n=n, method=request.method, path=path, raw=request.raw_path,
                    query=request.query_string, headers=dict(request.headers), body=body)
        step = self._step(path)
        if step is None:
            return web.json_response(
                {"error": {"message": f"no script for {path}", "type": "not_found", "code": 404}},
                status=404)
        try:
            return await self._play(request, step, n, path, body)
        except (ConnectionResetError, asyncio.CancelledError) as exc:
            self.record("disconnect", n=n, i=getattr(exc, "chunk_index", None))
            raise

    async def _play(self, request: web.Request, step: dict, n: int, path: str,
                    body: Any) -> web.StreamResponse:
        if step.get("delay"):
            await asyncio.sleep(float(step["delay"]))
        if step.get("exit"):
            self.record("exit", n=n)
            os._exit(1)
        if step.get("stall"):
            while True:  # until the client disconnects (the handler is cancelled or write fails)
                await asyncio.sleep(3600)
        headers = dict(step.get("headers", {}))
        status = int(step.get("status", 200))
        if step.get("echo"):
            resp = web.json_response({"path": path, "query": request.query_string,
                                      "headers": dict(request.headers), "body": body},
                                     status=status, headers=headers)
            self.record("complete", n=n)
            return resp
        if "sse" in step:
            return await self._stream(request, step, n, status, headers)
        if "json" in step:
            resp = web.json_response(step["json"], status=status, headers=headers)
        else:
            resp = web.Response(body=str(step.get("body", "")).encode(), status=status,
                                headers=headers,
                                content_type=step.get("content_type", "text/plain"))
        self.record("complete", n=n)
        return resp

    async def _stream(self, request: web.Request, step: dict, n: int, status: int,
                      headers: dict) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers})
        await resp.prepare(request)
        interval = float(step.get("interval", 0))
        events = _events(step)
        if step.get("done", True):
            events.append("[DONE]")
        i = 0
        try:
            for i, event in enumerate(events):
                if i and interval:
                    await asyncio.sleep(interval)
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError("client went away")
                await resp.write(_encode_event(event, i))
                self.record("chunk", n=n, i=i)
        except (ConnectionResetError, asyncio.CancelledError) as exc:
            exc.chunk_index = i  # type: ignore[attr-defined]
            raise
        then = step.get("then", "end")
        if then == "stall":
            while True:
                await asyncio.sleep(0.2)
                if request.transport is None or request.transport.is_closing():
                    exc = ConnectionResetError("client went away")
                    exc.chunk_index = i  # type: ignore[attr-defined]
                    raise exc
        if then == "close":
            self.record("close", n=n)
            if request.transport is not None:
                request.transport.abort()
            return resp
        if then == "exit":
            self.record("exit", n=n)
            os._exit(1)
        await resp.write_eof()
        self.record("complete", n=n)
        return resp


def make_app(script: dict, port: int = 0, record: str | None = None) -> web.Application:
    backend = Backend(script, port, Recorder(record))
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", backend.handle)
    backend.record("start", pid=os.getpid(), port=port)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--script", required=True, help="JSON script (see module docstring)")
    parser.add_argument("--record", help="append events here as JSON lines")
    args = parser.parse_args(argv)
    script = json.loads(Path(args.script).read_text())
    app = make_app(script, args.port, args.record)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None,
                handler_cancellation=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
