"""The start-up data check on a remote source (issue 19 section 3): it reads a shard no further than
its first kept document, and a source that keeps it reading stops at data.check_time_s unchecked,
not failed. A local server streams a RedPajama-V2 shard generated on the fly (nothing on disk)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from stuffed_mamba.data import DataConfig
from stuffed_mamba.data.check import check_source

CAP = 64 << 20  # compressed bytes the server would send at most: the size of the "whole shard"
BIG, ENDLESS = "2023-06/0000/en_tail", "2023-06/0001/en_tail"  # tail: no duplicates list to fetch


def _line(text: str) -> bytes:
    return json.dumps({"raw_content": text}).encode() + b"\n"


def _body(tag: str, gz):
    """Compressed pieces of the shard, made as they are sent, up to CAP (BIG) or 16 CAP bytes."""
    n = 0
    if tag == BIG:  # one document that passes, then incompressible filler documents
        yield gz.compress(_line("kept " * 400))
    while n < (CAP if tag == BIG else 16 * CAP):
        if tag == BIG:
            c = gz.compress(_line(base64.b64encode(os.urandom(300_000)).decode()))
        else:  # short documents without end: the check keeps reading until its time is up
            c = gz.compress(b"".join(_line(base64.b64encode(os.urandom(300)).decode()) for _ in range(1000)))
        n += len(c)
        yield c


@pytest.fixture(scope="module")
def server():
    sent = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes: no length needed

        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path.startswith("/listings/"):
                body = {"/listings/big.txt": BIG, "/listings/endless.txt": ENDLESS}.get(self.path, "").encode()
                self.send_response(200 if body else 404)
                self.end_headers()
                self.wfile.write(body)
                return
            tag = {f"/documents/{BIG}.json.gz": BIG, f"/documents/{ENDLESS}.json.gz": ENDLESS}.get(self.path)
            if tag is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.end_headers()
            gz, n = zlib.compressobj(6, zlib.DEFLATED, 31), 0
            try:
                for c in _body(tag, gz):
                    self.wfile.write(c)
                    n += len(c)
                self.wfile.write(gz.flush())
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client has what it needed
            finally:
                sent[tag] = n

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", sent
    finally:
        srv.shutdown()
        srv.server_close()


def _cfg(url: str, listing: str, **kw) -> DataConfig:
    return DataConfig(source=url, listing=listing, tokenizer="bytes", min_doc_tokens=1000, batch_size=1, **kw)


def test_the_check_reads_a_remote_shard_only_up_to_its_first_kept_document(server):
    url, sent = server
    assert check_source(_cfg(url, "big")).startswith("data: a first document found for 1 of 1 row streams")
    for _ in range(100):  # the server notices the closed connection at its next write
        if BIG in sent:
            break
        time.sleep(0.1)
    # the client reads 1 MiB at a time; the rest is what the sockets' buffers took before it closed
    assert sent[BIG] < CAP / 4, sent


def test_a_source_that_keeps_the_check_reading_stops_at_its_time_budget(server):
    url, _ = server
    t0 = time.monotonic()
    result = check_source(_cfg(url, "endless", check_time_s=1.0))
    assert result.startswith("data: a first document found for 0 of 1 row streams")
    assert time.monotonic() - t0 < 15  # 1 s of reading; the rest is start-up on a loaded machine
