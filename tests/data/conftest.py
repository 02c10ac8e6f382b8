import shutil
import threading

import pytest
from stuffed_mamba.data.mirror import write_documents, write_listing

from tests.helpers import QuietFiles, serve

from .mirror import build_mirror, rec, text, write_corpus


@pytest.fixture(scope="session")
def mirror(tmp_path_factory):
    """The RedPajama-V2-layout mirror with broken, duplicate and boundary-length documents."""
    return build_mirror(tmp_path_factory.mktemp("mirror"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A clean 8-shard mirror of short documents (for sharding and resume)."""
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root)
    return root


NOT_FOUND = "2023-06/0003/en_tail"  # exists on disk, but the server answers 404
STALLS = "2023-06/0004/en_tail"  # the server answers only after the client's time-out
FLAKY = "2023-06/0005/en_tail"  # odd-numbered transfers stop half-way and stall; the retries succeed
HTTP_LISTING = "en-2023-06-http.txt"


@pytest.fixture(scope="session")
def http_mirror(tmp_path_factory, mirror):
    """The test mirror plus three misbehaving shards, served on 127.0.0.1 by a local server."""
    root = tmp_path_factory.mktemp("http_mirror")
    shutil.copytree(mirror.root, root, dirs_exist_ok=True)
    for i, tag in enumerate([NOT_FOUND, STALLS, FLAKY]):
        write_documents(root, tag, [rec(text(5000 + 1000 * j, 500 + 10 * i + j)) for j in range(3)])
    tags = (root / "listings" / mirror.listing).read_text().split()
    write_listing(root, HTTP_LISTING, tags + [NOT_FOUND, STALLS, FLAKY])
    release = threading.Event()
    seen = {"flaky": 0}

    class Handler(QuietFiles):
        def do_GET(self):
            if self.path.endswith(f"{NOT_FOUND}.json.gz"):
                return self.send_error(404)
            if self.path.endswith(f"{STALLS}.json.gz"):
                release.wait(5)
                self.close_connection = True
                return
            if self.path.endswith(f"{FLAKY}.json.gz"):
                seen["flaky"] += 1
                if seen["flaky"] % 2 == 1:  # every first attempt of a client breaks off
                    body = (root / "documents" / f"{FLAKY}.json.gz").read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    release.wait(5)
                    return
            return super().do_GET()

    with serve(root, Handler) as url:
        try:
            yield {"root": root, "url": url, "seen": seen}
        finally:
            release.set()  # before the server stops: its stalled handlers wait for it
