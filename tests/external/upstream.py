#!/usr/bin/env python3
"""A tiny keep-alive upstream for tests/external/hostile-tools.sh.

Not `python3 -m http.server`: that one speaks HTTP/1.0 (a new upstream
connection per request) and answers POST with 501 without reading the body, so
a slow-body attack would end at the upstream instead of exercising the guard;
its thread per connection also made the upstream itself the slow part when
hundreds of slow readers each held a 1 MiB response. This one is a single
asyncio loop:
  GET/HEAD /public/big*  -> 200, 1 MiB (for the slow-read attack)
  GET/HEAD anything else -> 200, "ok\\n"
  POST/PUT               -> reads the whole body (Content-Length or chunked), then 200
Usage: upstream.py PORT   (binds 127.0.0.1 only)
"""
import asyncio
import sys

BIG = b"x" * (1 << 20)
IDLE = 60  # seconds an idle keep-alive connection from the guard's pool is kept


async def read_body(reader, headers):
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return
            await reader.readexactly(size + 2)
    left = int(headers.get("content-length") or 0)
    while left > 0:
        chunk = await reader.read(min(left, 65536))
        if not chunk:
            raise ConnectionError("body cut short")
        left -= len(chunk)


async def handle(reader, writer):
    try:
        while True:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            await read_body(reader, headers)
            if method in ("POST", "PUT"):
                body = b"received\n"
            elif target.startswith("/public/big"):
                body = BIG
            else:
                body = b"ok\n"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body))
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
