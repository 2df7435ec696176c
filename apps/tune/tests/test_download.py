"""`tune download` with the real `huggingface_hub` client against a loopback server in the Hub's API shape."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import Hub, Repo
from tune_support import run_tune, tune_script

CONFIG = b'{"architectures": ["LlamaForCausalLM"]}'
WEIGHTS = hashlib.sha256(b"w").digest() * 4096  # 128 KiB
# Larger than huggingface_hub's 10 MiB download chunk, so a cut transfer leaves a whole chunk written.
BIG = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(12 * 2**15))  # 12 MiB
TOKEN = "hf_secretTOKENvalue123"
# Names a glob pattern would misread: `[v2]` is a character class matching one of 'v' or '2'.
ODD = {
    "config.json": CONFIG,
    "model [v2].safetensors": WEIGHTS,
    "notes with spaces.md": b"# notes",
    "a]b[c.txt": b"brackets",
    "sub dir/[x].json": b"{}",
}


@pytest.fixture
def hub() -> Iterator[Hub]:
    server = Hub(
        {
            "org/tiny": Repo(
                {
                    "config.json": CONFIG,
                    "model.safetensors": WEIGHTS,
                    "pytorch_model.bin": b"PICKLE",
                    "README.md": b"# tiny",
                }
            ),
            "org/old": Repo({"config.json": CONFIG, "pytorch_model.bin": b"PICKLE"}),
            "org/gated": Repo({"config.json": CONFIG, "model.safetensors": WEIGHTS}, gated=True),
            "org/big": Repo({"config.json": CONFIG, "model.safetensors": BIG}),
            "org/odd": Repo(ODD),
        }
    ).start()
    yield server
    server.stop()


def _env(hub: Hub, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf_home"),  # no saved login from the machine
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": "",
        **extra,
    }
    return env


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.parts
    }


def _fetched(hub: Hub) -> set[str]:
    return {p.rsplit("/", 1)[-1] for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p}


def test_downloads_the_repo_and_skips_pickle_weights(hub: Hub, tmp_path: Path) -> None:
    out = run_tune("download", "org/tiny", "--output-dir", str(tmp_path / "tiny"), env=_env(hub, tmp_path))
    assert out.returncode == 0, out.stderr
    assert _files(tmp_path / "tiny") == {
        "config.json": CONFIG,
        "model.safetensors": WEIGHTS,
        "README.md": b"# tiny",
    }
    assert "skipping pickle files" in out.stderr
    assert "pytorch_model.bin" in out.stderr
    assert "pytorch_model.bin" not in _fetched(hub)
    assert "%|" in out.stderr  # a progress bar
    assert f"downloaded org/tiny to {tmp_path / 'tiny'}" in out.stdout


def test_only_pickle_weights_are_refused_unless_allowed(hub: Hub, tmp_path: Path) -> None:
    refused = run_tune("download", "org/old", "--output-dir", str(tmp_path / "old"), env=_env(hub, tmp_path))
    assert refused.returncode == 2
    assert "only pickle weights (pytorch_model.bin)" in refused.stderr
    assert "--allow-pickle" in refused.stderr
    assert _fetched(hub) == set()  # refused before anything was fetched
    allowed = run_tune(
        "download",
        "org/old",
        "--output-dir",
        str(tmp_path / "old"),
        "--allow-pickle",
        env=_env(hub, tmp_path),
    )
    assert allowed.returncode == 0, allowed.stderr
    assert _files(tmp_path / "old") == {"config.json": CONFIG, "pytorch_model.bin": b"PICKLE"}


def test_include_and_exclude(hub: Hub, tmp_path: Path) -> None:
    args = [
        "download",
        "org/tiny",
        "--output-dir",
        str(tmp_path / "t"),
        "--include",
        "*.json",
        "--include",
        "*.md",
    ]
    out = run_tune(*args, "--exclude", "README*", env=_env(hub, tmp_path))
    assert out.returncode == 0, out.stderr
    assert _files(tmp_path / "t") == {"config.json": CONFIG}
    none = run_tune(
        "download",
        "org/tiny",
        "--output-dir",
        str(tmp_path / "n"),
        "--include",
        "*.gguf",
        env=_env(hub, tmp_path),
    )
    assert none.returncode == 2
    assert "no file matches" in none.stderr


def test_gated_repo_needs_a_token_which_is_sent_but_never_printed(hub: Hub, tmp_path: Path) -> None:
    gated = run_tune("download", "org/gated", "--output-dir", str(tmp_path / "g"), env=_env(hub, tmp_path))
    assert gated.returncode == 1
    assert gated.stderr.strip() == (
        "error: org/gated: gated repository; accept its terms on the Hub, then pass --token or set HF_TOKEN"
    )
    ok = run_tune(
        "download", "org/gated", "--output-dir", str(tmp_path / "g"), env=_env(hub, tmp_path, HF_TOKEN=TOKEN)
    )
    assert ok.returncode == 0, ok.stderr
    assert _files(tmp_path / "g") == {"config.json": CONFIG, "model.safetensors": WEIGHTS}
    sent = {h.get("authorization") for m, p, h in hub.requests if "org/gated" in p}
    assert f"Bearer {TOKEN}" in sent
    assert TOKEN not in ok.stdout + ok.stderr
    flag = run_tune(
        "download",
        "org/nothere",
        "--token",
        TOKEN,
        "--output-dir",
        str(tmp_path / "x"),
        env=_env(hub, tmp_path),
    )
    assert flag.returncode == 2
    assert "org/nothere: repository not found" in flag.stderr
    assert TOKEN not in flag.stdout + flag.stderr


def test_missing_revision(hub: Hub, tmp_path: Path) -> None:
    rev = run_tune(
        "download",
        "org/tiny",
        "--revision",
        "v9",
        "--output-dir",
        str(tmp_path / "r"),
        env=_env(hub, tmp_path),
    )
    assert rev.returncode == 2
    assert rev.stderr.strip() == "error: org/tiny: revision 'v9' not found"


@pytest.mark.slow  # the client retries a refused connection for about 25 s before giving up
def test_unreachable_endpoint_is_an_expected_failure(hub: Hub, tmp_path: Path) -> None:
    hub.stop()  # nothing listens on that port any more
    down = run_tune("download", "org/tiny", "--output-dir", str(tmp_path / "d"), env=_env(hub, tmp_path))
    assert down.returncode == 1
    assert down.stderr.strip().splitlines() == [
        "error: org/tiny: network error: [Errno 111] Connection refused"
    ], down.stderr
    assert "Traceback" not in down.stderr


def test_a_dropped_connection_resumes_with_a_range_request(hub: Hub, tmp_path: Path) -> None:
    hub.cut["model.safetensors"] = 11 * 2**20  # close the first transfer after 11 MiB
    out = run_tune("download", "org/big", "--output-dir", str(tmp_path / "big"), env=_env(hub, tmp_path))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "big" / "model.safetensors").read_bytes() == BIG
    ranges = [h.get("range") for h in hub.gets("model.safetensors")]
    assert ranges == [None, f"bytes={10 * 2**20}-"]  # the whole 10 MiB chunk that was written is kept


def test_an_interrupted_run_keeps_finished_files_on_rerun(hub: Hub, tmp_path: Path) -> None:
    hub.stall["model.safetensors"] = 2**20  # send 1 MiB, then hang until the client is killed
    target = tmp_path / "big"
    args = [tune_script(), "download", "org/big", "--output-dir", str(target)]
    proc = subprocess.Popen(
        args, env={**os.environ, **_env(hub, tmp_path)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while hub.sent.get("model.safetensors") is None or not (target / "config.json").exists():
        assert time.monotonic() < deadline, "the download never started"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (target / "model.safetensors").exists()
    config_gets = len(hub.gets("config.json"))
    again = run_tune("download", "org/big", "--output-dir", str(target), env=_env(hub, tmp_path))
    assert again.returncode == 0, again.stderr
    assert (target / "model.safetensors").read_bytes() == BIG
    assert (target / "config.json").read_bytes() == CONFIG
    assert len(hub.gets("config.json")) == config_gets  # the finished file was not fetched again


def test_names_with_brackets_and_spaces_are_fetched_as_named(hub: Hub, tmp_path: Path) -> None:
    out = run_tune("download", "org/odd", "--output-dir", str(tmp_path / "odd"), env=_env(hub, tmp_path))
    assert out.returncode == 0, out.stderr
    assert _files(tmp_path / "odd") == ODD  # every listed file, byte for byte; none skipped


def test_a_listed_file_the_server_cannot_deliver_is_named(hub: Hub, tmp_path: Path) -> None:
    hub.missing.add("model [v2].safetensors")
    out = run_tune("download", "org/odd", "--output-dir", str(tmp_path / "odd"), env=_env(hub, tmp_path))
    assert out.returncode == 1, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert lines == [
        "error: org/odd: model [v2].safetensors: listed by the repository but the server has no such "
        "file (HTTP 404)"
    ], out.stderr
    assert "Traceback" not in out.stderr
    assert "downloaded org/odd" not in out.stdout
    assert not (tmp_path / "odd" / "model [v2].safetensors").exists()
