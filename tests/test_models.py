"""Model identity and checkpoints: names, overrides, download once per node, clear errors."""

import hashlib
import multiprocessing
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.core.storage import Location
from pipeline.model.registry import (
    OFFICIAL_MODELS,
    ModelError,
    build_model,
    check_checkpoint,
    local_checkpoint,
    resolve_model,
)
from tests.conftest import MICRO_CONFIG


def test_every_official_name_maps_to_a_sam2_config_and_url():
    assert len(OFFICIAL_MODELS) == 8
    for name in OFFICIAL_MODELS:
        spec = resolve_model(name, None, None)
        assert spec.config.startswith("configs/sam2")
        assert spec.checkpoint.startswith("https://dl.fbaipublicfiles.com/segment_anything_2/")
        assert spec.checkpoint.endswith(".pt")


def test_config_and_checkpoint_override_the_name():
    spec = resolve_model("sam2.1-hiera-large", "configs/sam2.1/sam2.1_hiera_t.yaml", "/w/t.pt")
    assert (spec.config, spec.checkpoint) == ("configs/sam2.1/sam2.1_hiera_t.yaml", "/w/t.pt")


def test_bad_names_and_configs():
    with pytest.raises(ModelError, match="unknown model.name"):
        resolve_model("sam2-hiera-huge", None, None)
    with pytest.raises(ModelError, match="neither a sam2 config nor a yaml file"):
        resolve_model(None, "configs/nope.yaml", None)
    with pytest.raises(ModelError, match="checkpoint not found"):
        check_checkpoint(Location("/no/such/file.pt"))


class CountingHandler(SimpleHTTPRequestHandler):
    served = None  # bytes of the body sent, per path; set per server

    def log_message(self, *args):
        pass

    def copyfile(self, source, outputfile):
        data = source.read()
        try:
            outputfile.write(data)
            outputfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return  # the client hung up after the headers (fsspec's exists() does that)
        self.served[self.path] = self.served.get(self.path, 0) + len(data)


@pytest.fixture()
def http_server(tmp_path, micro_checkpoint):
    """A loopback HTTP server serving the micro checkpoint, counting bytes served."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "micro.pt").write_bytes(Path(micro_checkpoint).read_bytes())
    served: dict[str, int] = {}
    handler = type("Handler", (CountingHandler,), {"served": served})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served, root
    server.shutdown()


def fetch(url: str, cache: str) -> str:
    import os

    os.environ["AUTOLABEL_CACHE"] = cache
    return local_checkpoint(Location(url))


def test_remote_checkpoint_is_downloaded_once_even_by_concurrent_actors(
    http_server, tmp_path, monkeypatch
):
    base, served, root = http_server
    url = f"{base}/micro.pt"
    check_checkpoint(Location(url))
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTOLABEL_CACHE", str(cache))
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        paths = pool.starmap(fetch, [(url, str(cache))] * 3)
    assert len(set(paths)) == 1
    size = (root / "micro.pt").stat().st_size
    assert served["/micro.pt"] == size, "downloaded more than once"
    digest = hashlib.sha256((root / "micro.pt").read_bytes()).hexdigest()
    assert hashlib.sha256(Path(paths[0]).read_bytes()).hexdigest() == digest
    assert not list(cache.glob("*.partial"))
    model = build_model(resolve_model(None, MICRO_CONFIG, url), "cpu")
    assert model.image_size == 256
    assert served["/micro.pt"] == size  # the build found it in the cache


def test_missing_remote_checkpoint_is_a_clear_error(http_server):
    base, _, _ = http_server
    with pytest.raises(ModelError, match="checkpoint not found"):
        check_checkpoint(Location(f"{base}/absent.pt"))
