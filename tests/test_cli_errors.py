"""The whole kind (issue 16): every command, given bad input, prints ONE
line on stderr, exits non-zero, never a traceback, and leaves nothing
half-written.

Bad inputs: a missing path, a path that looks like an image reference (and
the other way round), a garbage model file or layout, an unreachable
registry port, a wrong password, an output that cannot be written, a full
small disk, and Ctrl-C in the middle of a run.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelimage.cli import main
from modelimage.errors import ModelImageError

from .faultproxy import FaultProxy, Rule, Throttle
from .tools import tmpfs


def one_line(capsys: pytest.CaptureFixture[str], argv: list[str], code: int | None = None) -> str:
    """Run ``modelimage ARGV`` and return its one error line."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc != 0 if code is None else rc == code, (argv, rc, err)
    assert "Traceback" not in err, (argv, err)
    assert err.count("\n") == 1 and err.startswith("error: "), (argv, err)
    return err.rstrip("\n")


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ---------------------------------------------------------------- paths that look like paths


PATHS = ["./no-such-model", "../no/such", "/no/such/folder", "~/no-such-model", "models/llama.safetensors",
         "weights/model.gguf"]


@pytest.mark.parametrize("command", ["inspect", "plan", "estimate", "build", "render dockerfile", "render k8s"])
@pytest.mark.parametrize("path", PATHS)
def test_a_missing_model_path_is_no_such_file_or_folder(command, path, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line(capsys, [*command.split(), path])
    assert line == f"error: {path}: no such file or folder"
    assert listing(tmp_path) == []


@pytest.mark.parametrize("command", ["pull", "verify"])
@pytest.mark.parametrize("path", PATHS)
def test_a_missing_image_path_is_no_such_file_or_folder(command, path, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert one_line(capsys, [command, path, "dest"]) == f"error: {path}: no such file or folder"
    assert listing(tmp_path) == []


def test_a_folder_where_an_image_is_read_says_what_to_write(llama_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["build", str(llama_dir), "-o", "oci:layout:v1"]) == 0
    capsys.readouterr()
    assert one_line(capsys, ["pull", "./layout", "dest"]) == "error: ./layout is an OCI layout: name it oci:./layout[:TAG]"
    line = one_line(capsys, ["verify", str(llama_dir), "dest"])
    assert line.startswith(f"error: {llama_dir}: a folder, not an image (give HOST/REPO[:TAG], oci:DIR[:TAG]")
    assert sorted(os.listdir(tmp_path)) == ["layout"]


@pytest.mark.parametrize(("ref", "expected"), [
    ("./out", "./out: a file system path, not an image reference (HOST/REPO[:TAG])"),
    ("a..b:5000/x:v1", "'a..b:5000/x:v1': 'a..b:5000' is not a registry host"),
    (".:5000/x", "'.:5000/x': '.:5000' is not a registry host"),
])
def test_a_push_target_that_is_not_a_reference(ref, expected, llama_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert expected in one_line(capsys, ["build", str(llama_dir), "--push", ref])
    assert listing(tmp_path) == []


# ---------------------------------------------------------------- every command, every kind of bad input


@pytest.fixture(scope="module")
def world(tmp_path_factory, llama_dir):
    """What the bad inputs are made of: a good layout, a garbage model, a
    garbage layout, and a regular file to put outputs under."""
    root = tmp_path_factory.mktemp("world")
    assert main(["build", str(llama_dir), "-o", f"oci:{root / 'layout'}:v1", "-q"]) == 0
    (root / "garbage").mkdir()
    (root / "garbage" / "model.safetensors").write_bytes(bytes(range(256)) * 20)
    (root / "garbage" / "config.json").write_text("{}")
    (root / "badlayout").mkdir()
    (root / "badlayout" / "index.json").write_text("garbage")
    (root / "badlayout" / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "afile").write_text("a file, not a folder\n")
    return {"model": str(llama_dir), "layout": f"oci:{root / 'layout'}:v1", "garbage": str(root / "garbage"),
            "badlayout": f"oci:{root / 'badlayout'}", "file": str(root / "afile")}


@pytest.fixture
def quick_retries(monkeypatch):
    """The retry policy as it is, without its waits (a refused port is
    retried six times, 33 s in all)."""
    from modelimage.registry.transport.retry import RetryPolicy

    monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt, e=None: 0.0)


# (argv, what the line says); {ws} is an empty working folder that must stay empty
BAD = {
    # a missing path (and a layout, a config, a base that are not there)
    "push missing layout": (["push", "oci:{ws}/missing:v1", "127.0.0.1:1/a/b:v1"], "missing"),
    "estimate missing layout": (["estimate", "oci:{ws}/missing"], "missing"),
    "inspect missing layout": (["inspect", "oci:{ws}/missing"], "missing"),
    "build missing base": (["build", "{model}", "--base", "oci:{ws}/missing", "-o", "oci:{ws}/x"], "missing"),
    "render action missing": (["render", "github-action", "{ws}/missing", "--image", "ghcr.io/a/b:v1"], "missing"),
    "limits missing config": (["limits", "--config", "{ws}/missing.toml"], "missing.toml"),
    # a path that looks like a reference: no such model here (and no registry there)
    "plan ref-like": (["plan", "localhost:1/acme/llama:v1"], "no such file, folder or named model"),
    "build ref-like": (["build", "localhost:1/acme/llama:v1", "-o", "oci:{ws}/x"], "no such file, folder"),
    "render ref-like": (["render", "dockerfile", "localhost:1/acme/llama:v1"], "no such file, folder"),
    "inspect ref-like": (["inspect", "localhost:1/acme/llama:v1"], "localhost:1"),
    # a garbage model file, a garbage layout
    "inspect garbage": (["inspect", "{garbage}"], "model.safetensors"),
    "plan garbage": (["plan", "{garbage}"], "model.safetensors"),
    "build garbage": (["build", "{garbage}", "-o", "oci:{ws}/x"], "model.safetensors"),
    "estimate garbage": (["estimate", "{garbage}"], "model.safetensors"),
    "render garbage": (["render", "dockerfile", "{garbage}"], "model.safetensors"),
    "k8s garbage": (["render", "k8s", "{garbage}", "--image", "ghcr.io/a/b:v1"], "model.safetensors"),
    "pull bad layout": (["pull", "{badlayout}", "{ws}/d"], "index.json"),
    "verify bad layout": (["verify", "{badlayout}", "{ws}/d"], "index.json"),
    "push bad layout": (["push", "{badlayout}", "127.0.0.1:1/a/b:v1"], "index.json"),
    "estimate bad layout": (["estimate", "{badlayout}"], "index.json"),
    "inspect bad layout": (["inspect", "{badlayout}"], "index.json"),
    # an unreachable registry port
    "pull refused": (["pull", "127.0.0.1:1/a/b:v1", "{ws}/d"], "127.0.0.1:1"),
    "verify refused": (["verify", "127.0.0.1:1/a/b:v1", "{ws}/d"], "127.0.0.1:1"),
    "push refused": (["push", "{layout}", "127.0.0.1:1/a/b:v1"], "127.0.0.1:1"),
    "build --push refused": (["build", "{model}", "--push", "127.0.0.1:1/a/b:v1"], "127.0.0.1:1"),
    "estimate refused": (["estimate", "127.0.0.1:1/a/b:v1"], "127.0.0.1:1"),
    "inspect refused": (["inspect", "127.0.0.1:1/a/b:v1"], "127.0.0.1:1"),
    "base refused": (["build", "{model}", "--base", "127.0.0.1:1/a/b:v1", "-o", "oci:{ws}/x"], "127.0.0.1:1"),
    # an output that cannot be written (a folder where a file is)
    "build -o under a file": (["build", "{model}", "-o", "oci:{file}/x"], "afile"),
    "build archive under a file": (["build", "{model}", "-o", "oci-archive:{file}/x.tar"], "afile"),
    "pull under a file": (["pull", "{layout}", "{file}/d"], "afile"),
    "render under a file": (["render", "dockerfile", "{model}", "--builder", "docker", "-o", "{file}/D"], "afile"),
    "makefile under a file": (["render", "makefile", "-o", "{file}/modelimage.mk"], "afile"),
    "example-model under a file": (["example-model", "{file}/m"], "afile"),
}


@pytest.mark.parametrize("case", BAD)
def test_every_command_with_bad_input(case, world, quick_retries, tmp_path, capsys, monkeypatch):
    argv, expected = BAD[case]
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    before = listing(Path(world["file"]).parent)
    line = one_line(capsys, [a.format(ws=ws, **world) for a in argv])
    assert expected in line, line
    assert listing(ws) == [], case  # nothing half-written
    assert listing(Path(world["file"]).parent) == before


def test_login_to_a_refused_port_and_with_a_wrong_password(htpasswd_registry, quick_retries, tmp_path, capsys,
                                                            monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    for host, password in [("127.0.0.1:1", "pw"), (htpasswd_registry.host, "not-the-password")]:
        monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        line = one_line(capsys, ["login", host, "-u", htpasswd_registry.username, "--password-stdin"])
        assert host in line and password not in line
    assert not (tmp_path / "docker").exists()  # nothing stored


@pytest.fixture(scope="module")
def private_image(htpasswd_registry, world, tmp_path_factory):
    """The layout pushed to the registry with basic auth, then the stored
    credentials swapped for a wrong password."""
    reg = htpasswd_registry
    config = tmp_path_factory.mktemp("docker-config")
    env = os.environ.get("DOCKER_CONFIG")
    os.environ["DOCKER_CONFIG"] = str(config)
    try:
        from modelimage.registry.keychain import store_credentials

        store_credentials(reg.host, reg.username, reg.password)
        assert main(["push", world["layout"], f"{reg.host}/private/llama:v1", "-q"]) == 0
        store_credentials(reg.host, reg.username, "wrong-pa55word")
    finally:
        if env is None:
            os.environ.pop("DOCKER_CONFIG")
        else:
            os.environ["DOCKER_CONFIG"] = env
    return f"{reg.host}/private/llama:v1", config


WRONG_PASSWORD = {
    "pull": ["pull", "{ref}", "{ws}/d"],
    "verify": ["verify", "{ref}", "{ws}/d"],
    "push": ["push", "{layout}", "{ref}"],
    "build --push": ["build", "{model}", "--push", "{ref}"],
    "estimate": ["estimate", "{ref}"],
    "inspect": ["inspect", "{ref}"],
    "build --base": ["build", "{model}", "--base", "{ref}", "-o", "oci:{ws}/x"],
}


@pytest.mark.parametrize("case", WRONG_PASSWORD)
def test_a_wrong_stored_password(case, private_image, world, quick_retries, tmp_path, capsys, monkeypatch):
    ref, config = private_image
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    line = one_line(capsys, [a.format(ws=ws, ref=ref, **world) for a in WRONG_PASSWORD[case]])
    assert ref.split("/")[0] in line and "wrong-pa55word" not in line, line
    assert listing(ws) == []


# ---------------------------------------------------------------- a full small disk


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs (as root; a failure, not a skip, under CI=true)."""
    yield from tmpfs(tmp_path / "disk", "1m")


FULL = {
    "build": (["build", "{model}", "-o", "oci:{disk}/x"], "No space left"),
    "build archive": (["build", "{model}", "-o", "oci-archive:{disk}/x.tar"], "No space left"),
    "pull": (["pull", "{layout}", "{disk}/d"], "free"),
    "example-model": (["example-model", "{disk}/m"], "space"),
    "render": (["render", "dockerfile", "{model}", "--builder", "docker", "-o", "{disk}/Dockerfile"], "space"),
}


@pytest.mark.parametrize("case", FULL)
def test_a_full_disk(case, full_disk, world, tmp_path, capsys, monkeypatch):
    argv, expected = FULL[case]
    monkeypatch.chdir(tmp_path)
    if case == "render":  # a Dockerfile is small: fill the disk first
        with open(full_disk / "filler", "wb") as f:
            with contextlib.suppress(OSError):
                f.write(b"\0" * (2 << 20))
    before = listing(full_disk)
    line = one_line(capsys, [a.format(disk=full_disk, **world) for a in argv])
    assert expected in line, line
    left = [p for p in listing(full_disk) if p not in before]
    assert left in ([], ["d"]), left  # pull checks the space in DEST (created empty) before anything


# ---------------------------------------------------------------- Ctrl-C


class _CtrlC:
    """The second layer's bytes stop with a KeyboardInterrupt, as Ctrl-C does."""

    def __init__(self, real):
        self.real, self.calls = real, 0

    def __call__(self, *args, **kw):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return self.real(*args, **kw)


@pytest.mark.parametrize("output", ["oci:{out}/layout", "oci-archive:{out}/image.tar"])
def test_ctrl_c_in_a_build_leaves_nothing(output, world, tmp_path, capsys, monkeypatch):
    import modelimage.layout.blobs as blobs

    monkeypatch.setenv("MODELIMAGE_NO_CACHE", "1")
    monkeypatch.setattr(blobs, "blob_chunks", _CtrlC(blobs.blob_chunks))
    monkeypatch.setattr(blobs, "write_layer_fd", _CtrlC(blobs.write_layer_fd))
    out = tmp_path / "out"
    out.mkdir()
    assert main(["build", world["model"], "-o", output.format(out=out)]) == 130
    captured = capsys.readouterr()
    assert captured.err == "interrupted; rerun to resume\n" and captured.out == ""
    assert listing(out) == []


@pytest.fixture(scope="module")
def slow(registry, world):
    """The registry behind a proxy that moves blobs at 2 MB/s, with the layout pushed (through the fast side)."""
    assert main(["push", world["layout"], f"{registry.host}/ctrl-c/llama:v1", "-q"]) == 0
    with FaultProxy(registry.host) as proxy:
        yield proxy


def interrupt(proxy, argv: list[str], env: dict[str, str], sig: int = signal.SIGINT) -> tuple[int, str, str]:
    """``modelimage ARGV`` in a process of its own; Ctrl-C (SIGINT), or
    ``sig``, once a blob transfer has been going for a moment."""
    proxy.reset()
    proxy.add(Rule("*", r"/blobs/", Throttle(2_000_000), times=None))
    proc = subprocess.Popen([sys.executable, "-m", "modelimage", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while not any("/blobs/" in s.target and s.method in ("GET", "PATCH", "PUT") for s in proxy.seen):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@pytest.mark.parametrize("sig, code, what", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
@pytest.mark.parametrize("command", ["build --push", "pull", "build --base"])
def test_ctrl_c_mid_transfer(command, sig, code, what, slow, world, tmp_path):
    """Ctrl-C, or SIGTERM (`kill`, a cancelled CI job: it had no handler and
    left what Ctrl-C cleans), in the middle of a transfer: one line, and
    what follows holds for both."""
    env = {**os.environ, "MODELIMAGE_CACHE_DIR": str(tmp_path / "cache"), "DOCKER_CONFIG": str(tmp_path / "dc")}
    image = f"{slow.host}/ctrl-c/llama:v1"
    argv = {"build --push": ["build", world["model"], "--push", f"{slow.host}/ctrl-c/pushed:v1"],
            "pull": ["pull", image, str(tmp_path / "dest")],
            "build --base": ["build", world["model"], "--base", image, "-o", f"oci:{tmp_path / 'out'}:v1"]}[command]
    assert interrupt(slow, argv, env, sig) == (code, "", f"{what}; rerun to resume\n")
    if command == "build --push":  # nothing tagged
        from modelimage.registry.client import RegistryClient
        from modelimage.registry.reference import Reference

        ref = Reference.parse(f"{slow.host}/ctrl-c/pushed:v1")
        client = RegistryClient(ref)
        with pytest.raises(ModelImageError):
            client.get_manifest(ref.repository, "v1")
        client.close()
    elif command == "pull":  # what is in DEST is whole: staged parts and the record only
        visible = [p for p in listing(tmp_path / "dest") if not p.startswith(".modelimage-pull")]
        assert visible == [] or all((tmp_path / "dest" / p).is_dir() for p in visible), visible
    else:
        assert not (tmp_path / "out").exists()


SECRET = "hunter2-s3cret"


@pytest.mark.parametrize("ref", [f"alice:{SECRET}@127.0.0.1:5000/m/llama:v1",
                                 f"https://alice:{SECRET}@ghcr.io/acme/llama:v1",
                                 f"{SECRET}@ghcr.io/acme/llama@sha256:" + "a" * 64])
def test_credentials_in_a_reference_are_refused_and_never_printed(ref, llama_dir, tmp_path, capsys, monkeypatch):
    """USER:PASSWORD@HOST/REPO (as in a URL) was echoed back whole in the
    error ("... is not a sha256 digest"), so the password landed in CI logs.
    Every command refuses it in one line that shows *** and says to log in."""
    from .signkeys import write_keypair

    private, public = write_keypair(tmp_path / "keys")
    monkeypatch.chdir(tmp_path)
    for argv in (["build", str(llama_dir), "--push", ref], ["pull", ref, "dest"], ["verify", ref, "--key", str(public)],
                 ["sign", ref, "--key", str(private)], ["inspect", ref], ["estimate", ref]):
        line = one_line(capsys, argv)
        assert SECRET not in line and "***@" in line, argv
        assert "credentials do not go in an image reference" in line and "modelimage login " in line, argv
    assert listing(tmp_path) == ["keys", "keys/key.pem", "keys/key.pub"]


def test_ctrl_c_while_the_commands_load_is_one_line(tmp_path):
    """On a busy machine loading the commands takes seconds; a real SIGINT
    then was a 20-line traceback from inside an import (breaker3). The
    loading is made to wait here so the signal surely lands in it."""
    stall = tmp_path / "stall"
    stall.mkdir()
    (stall / "sitecustomize.py").write_text(  # sitecustomize runs first; it makes `import modelimage.cli` wait
        "import sys, time\n"
        "class _Stall:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'modelimage.cli':\n"
        "            open(sys.argv[-1], 'w').close(); time.sleep(30)\n"
        "sys.meta_path.insert(0, _Stall())\n")
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": f"{stall}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from modelimage.__main__ import main; main()",
                             "--version", str(ready)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (130, "", "interrupted\n")


def test_ctrl_c_in_a_command_that_does_not_resume_says_only_interrupted(llama_dir, capsys, monkeypatch):
    """"rerun to resume" is for pull, push and build; an interrupted
    inspect or estimate --calibrate has nothing to resume."""
    def ctrl_c(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr("modelimage.api._model.prepare", ctrl_c)
    assert main(["-q", "inspect", str(llama_dir)]) == 130
    assert capsys.readouterr() == ("", "interrupted\n")


def test_skopeos_other_transports_say_how_to_convert(llama_dir, tmp_path, capsys, monkeypatch):
    """``pull docker-archive:x.tar`` read as Docker Hub's library/docker-archive
    (tag x.tar) and failed on the network; ``oci-archive:`` of a docker save
    said only "no index.json" (breaker3). Each is one line naming skopeo's
    transport and the skopeo copy that converts it; nothing is written."""
    import tarfile

    monkeypatch.chdir(tmp_path)
    saved = tmp_path / "saved.tar"  # what docker save / podman save write: manifest.json, no index.json
    with tarfile.open(saved, "w") as t:
        data = b'[{"Config": "c.json", "RepoTags": ["x:v1"], "Layers": []}]'
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    for text in ("docker-archive:saved.tar", "docker-daemon:llama:v1", "containers-storage:localhost/llama:v1",
                 "dir:./copy"):
        for argv in (["pull", text, "dest"], ["inspect", text], ["estimate", text],
                     ["build", str(llama_dir), "--base", text, "-o", "oci:out"], ["push", "oci:none", text]):
            line = one_line(capsys, argv)
            if argv[0] == "push":  # the layout is looked at first
                continue
            assert f"{text.split(':')[0]}: is a transport of skopeo's" in line and f"skopeo copy {text} " in line, argv
    for argv in (["pull", "oci-archive:saved.tar", "dest"], ["inspect", "oci-archive:saved.tar"]):
        line = one_line(capsys, argv)
        assert "a docker-archive (docker save, podman save)" in line and "skopeo copy docker-archive:" in line
    assert listing(tmp_path) == ["saved.tar"]
