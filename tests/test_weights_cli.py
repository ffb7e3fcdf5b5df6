"""gtasr-weights list/fetch against a local HTTP server (Range, redirects, interruptions), --weights NAME,
and --version on every command."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gtasr_deploy import __version__
from gtasr_deploy.weights import registry as reg
from gtasr_deploy.cli.weights import main as weights_main
from gtasr_deploy.errors import ConfigError
from gtasr_deploy.hashing import file_sha256

FIXTURE = Path(__file__).parent / "data" / "upstream_tiny"
CHECKPOINT = FIXTURE / "checkpoint.pth"  # an official-format .pth of a tiny network


class Server:
    """Serves ``files`` under /resolve/main/ via a redirect to /blob/ (as Hugging Face does), with
    Range support; ``cut_after`` bytes of the next answer, then the connection drops."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ranges: list[str | None] = []
        self.cut_after: int | None = None
        self.ignore_range = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                if self.path.startswith("/resolve/main/"):
                    self.send_response(302)
                    self.send_header("Location", f"/blob/{name}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if name not in server.files:
                    self.send_error(404)
                    return
                data, start = server.files[name], 0
                header = None if server.ignore_range else self.headers.get("Range")
                server.ranges.append(header)
                if header:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[:server.cut_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/resolve/main"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(monkeypatch, tmp_path):
    srv = Server()
    monkeypatch.setenv(reg.URL_BASE_ENV, srv.base)
    monkeypatch.setenv(reg.DIR_ENV, str(tmp_path / "cache"))
    tiny = reg.WeightsEntry(name="tiny", filename="tiny.pth", network=str(FIXTURE / "network_g.json"),
                            description="test checkpoint", licence="test")
    monkeypatch.setitem(reg.REGISTRY, "tiny", tiny)
    srv.files["tiny.pth"] = CHECKPOINT.read_bytes()
    yield srv
    srv.close()


def run(*args):
    return CliRunner().invoke(weights_main, list(args))


def test_fetch_verifies_records_and_resolves(server, tmp_path):
    result = run("fetch", "tiny", "-q")
    assert result.exit_code == 0, result.output
    path = tmp_path / "cache" / "tiny.pth"
    assert path.read_bytes() == CHECKPOINT.read_bytes()
    record = json.loads((tmp_path / "cache" / "tiny.pth.json").read_text())
    assert record["sha256"] == file_sha256(CHECKPOINT) and record["bytes"] == CHECKPOINT.stat().st_size
    assert record["url"] == f"{server.base}/tiny.pth" and record["parameters"] > 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.pth", "tiny.pth.json"]  # no .part left
    assert reg.resolve_weights("tiny") == path
    assert reg.resolve_weights("TINY.PTH") == path  # the file name works as the name
    assert f"fetched: {path}" in run("list").output
    again = run("fetch", "tiny")
    assert again.exit_code == 0 and "already at" in again.output and len(server.ranges) == 1


def test_interrupted_download_resumes_with_range(server, tmp_path):
    size = len(server.files["tiny.pth"])
    server.cut_after = size // 3
    first = run("fetch", "tiny", "-q")
    assert first.exit_code == 1 and "interrupted at" in first.output and "run the same command again" in first.output
    part = tmp_path / "cache" / "tiny.pth.part"
    assert part.stat().st_size == size // 3
    assert not (tmp_path / "cache" / "tiny.pth").exists()
    with pytest.raises(ConfigError, match="run gtasr-weights fetch tiny"):
        reg.resolve_weights("tiny")
    second = run("fetch", "tiny", "-q")
    assert second.exit_code == 0, second.output
    assert server.ranges == [None, f"bytes={size // 3}-"]
    assert f"resumed at {size // 3} bytes" in second.output
    assert (tmp_path / "cache" / "tiny.pth").read_bytes() == CHECKPOINT.read_bytes()


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    (tmp_path / "cache").mkdir()
    garbage = b"garbage that is not the file's start"
    (tmp_path / "cache" / "tiny.pth.part").write_bytes(garbage)
    server.ignore_range = True
    result = run("fetch", "tiny", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cache" / "tiny.pth").read_bytes() == CHECKPOINT.read_bytes()
    # the message says what happened: a restart from 0, not a resume
    assert "resumed" not in result.output
    assert f"downloaded again from the start: the server ignored the request to resume at {len(garbage)} bytes" \
        in result.output


def test_a_server_that_honours_range_after_a_cut_says_resumed_and_one_that_does_not_says_restarted(server, tmp_path):
    size = len(server.files["tiny.pth"])
    for ignore, words in ((False, f"resumed at {size // 2} bytes"), (True, "downloaded again from the start")):
        server.cut_after, server.ignore_range = size // 2, False
        assert run("fetch", "tiny", "-q", "--force").exit_code == 1  # cut: the .part keeps half
        server.ignore_range = ignore
        result = run("fetch", "tiny", "-q", "--force")
        assert result.exit_code == 0 and words in result.output, result.output
        assert (tmp_path / "cache" / "tiny.pth").read_bytes() == CHECKPOINT.read_bytes()


def test_corrupt_or_wrong_file_is_refused(server, tmp_path):
    server.files["tiny.pth"] = b"<html>rate limited</html>" * 40
    result = run("fetch", "tiny", "-q")
    assert result.exit_code == 1 and "not a readable PyTorch checkpoint" in result.output and "deleted it" in result.output
    assert list((tmp_path / "cache").iterdir()) == []
    # a real checkpoint of another network under an official name: the paper-network check refuses it
    server.files["GTASR_final_phase.pth"] = CHECKPOINT.read_bytes()
    result = run("fetch", "gtasr-final", "-q")
    assert result.exit_code == 1 and "is not the paper network's weights" in result.output
    assert list((tmp_path / "cache").iterdir()) == []


def test_pickle_that_runs_code_is_refused(server, tmp_path):
    import io

    import torch

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    buffer = io.BytesIO()
    torch.save({"params_ema": Evil()}, buffer)
    server.files["tiny.pth"] = buffer.getvalue()
    result = run("fetch", "tiny", "-q")
    assert result.exit_code == 1 and "could execute code" in result.output and "executed" not in result.output


def test_http_errors_and_unknown_names(server, tmp_path):
    del server.files["tiny.pth"]
    result = run("fetch", "tiny", "-q")
    assert result.exit_code == 1 and "HTTP 404" in result.output
    result = run("fetch", "nosuch")
    assert result.exit_code == 2 and "unknown weights 'nosuch'" in result.output


def test_progress_lines_in_a_log(server):
    result = run("fetch", "tiny")
    assert result.exit_code == 0
    size = len(server.files["tiny.pth"])
    assert f"tiny.pth: {size}/{size} B" in result.output and "\r" not in result.output


@pytest.mark.slow  # ~45 s on 2 busy cores
def test_weights_name_in_gtasr_upscale(server, tmp_path):
    from PIL import Image

    from gtasr_deploy.cli.upscale import main as upscale_main

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    runner = CliRunner()
    result = runner.invoke(upscale_main, [str(tmp_path / "a.png"), str(tmp_path / "out"), "--weights", "tiny", "-q"])
    assert result.exit_code == 2 and "run gtasr-weights fetch tiny" in result.output
    assert not (tmp_path / "out").exists()
    assert run("fetch", "tiny", "-q").exit_code == 0
    result = runner.invoke(upscale_main, [str(tmp_path / "a.png"), str(tmp_path / "out"), "--weights", "tiny", "-q",
                                          "--network-config", str(FIXTURE / "network_g.json")])
    assert result.exit_code == 0, result.output
    assert Image.open(next((tmp_path / "out").iterdir())).size == (64, 64)


def test_resolve_rules(tmp_path, monkeypatch):
    monkeypatch.setenv(reg.DIR_ENV, str(tmp_path))
    assert reg.resolve_weights(None) is None
    assert reg.resolve_weights("demo") == reg.EMBEDDED and reg.EMBEDDED.is_file()
    local = tmp_path / "ctmsr"
    local.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert reg.resolve_weights("ctmsr") == Path("ctmsr")  # an existing file wins over a name
    assert reg.resolve_weights("some/dir/w.pth") == Path("some/dir/w.pth")  # left for the loader to report
    with pytest.raises(ConfigError, match="not a known weights name"):
        reg.resolve_weights("gtasr_final")
    assert reg.REGISTRY["gtasr-final"].url(None).startswith("https://huggingface.co/Blaze-UESTC/GTASR/resolve/main/")


def _scripts() -> dict[str, str]:
    import tomllib

    return tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(_scripts()))
def test_version_on_every_command(name):
    """Every console script of pyproject.toml, including ones added later."""
    import importlib

    module, _, attr = _scripts()[name].partition(":")
    result = CliRunner().invoke(getattr(importlib.import_module(module), attr), ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"{name}, version {__version__}"


@pytest.mark.parametrize("module,args", [("export", []), ("bench", []), ("eval", ["compare", "hr/"]),
                                         ("upscale", ["in/", "out/"])])
def test_weights_names_reach_every_command(module, args, tmp_path, monkeypatch):
    """--weights NAME goes through the registry in every command that takes --weights (before any work)."""
    import importlib

    monkeypatch.setenv(reg.DIR_ENV, str(tmp_path))
    main = importlib.import_module(f"gtasr_deploy.cli.{module}").main
    result = CliRunner().invoke(main, [*args, "--weights", "ctmsr"])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: weights 'ctmsr' are not fetched (looked in {tmp_path}); "
                                     "run gtasr-weights fetch ctmsr")
