#!/usr/bin/env python3
"""A loopback TCP proxy that delays every byte by a fixed time in each direction: a remote store's latency for
bench/s3.sh where the kernel has no `tc netem` (CONFIG_NET_SCH_NETEM unset, as on this machine's kernel).

    python3 bench/delay_proxy.py --listen-port-file FILE --target 127.0.0.1:PORT --delay-ms 10

Like netem on `lo` (a delay on every packet), each chunk read from one side is written to the other side
`--delay-ms` after it arrived, in order, so a request and its response take 2 x delay more than without the proxy
(netem `delay 10ms` on lo gives the same 20 ms round trip); a new connection first waits 2 x delay, the
handshake's round trip. Bandwidth is not limited. It listens on 127.0.0.1 on
a free port, writes the port to --listen-port-file once listening, and runs until killed. Its own CPU time is
reported by bench/s3.sh beside the worker's and the server's.
"""
import argparse
import asyncio
import os
import time

CHUNK = 1 << 18


async def pipe(reader, writer, delay):
    """Copies reader to writer, each chunk written `delay` seconds after it was read, in order."""
    queue = asyncio.Queue(maxsize=1024)

    async def read():
        while True:
            data = await reader.read(CHUNK)
            await queue.put((time.monotonic() + delay, data))
            if not data:
                return

    async def write():
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(read(), write())
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen-port-file", required=True)
    p.add_argument("--target", required=True, help="HOST:PORT to forward to")
    p.add_argument("--delay-ms", type=float, required=True, help="added in each direction")
    a = p.parse_args()
    host, port = a.target.rsplit(":", 1)
    delay = a.delay_ms / 1000

    async def handle(client_reader, client_writer):
        await asyncio.sleep(2 * delay)  # the TCP handshake's round trip, which netem would delay too
        try:
            server_reader, server_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, server_writer, delay), pipe(server_reader, client_writer, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    listen = server.sockets[0].getsockname()[1]
    tmp = f"{a.listen_port_file}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{listen}\n")
    os.replace(tmp, a.listen_port_file)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
