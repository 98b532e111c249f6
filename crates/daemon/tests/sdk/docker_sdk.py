"""The Docker SDK for Python (the `docker` package) against hulld, without
the CLI. Usage: docker_sdk.py SOCKET IMAGE [--run]; --run also runs
containers (needs a machine that can run VMs). Exits non-zero on failure."""

import io
import struct
import sys
import tarfile
import time

import docker
from docker.errors import APIError, ImageNotFound, NotFound


def main():
    socket, image = sys.argv[1], sys.argv[2]
    run = "--run" in sys.argv[3:]
    client = docker.DockerClient(base_url=f"unix://{socket}", version="auto")
    assert client.ping() is True
    version = client.version()
    assert version["Components"][0]["Name"] == "hull", version
    assert client.api.api_version == "1.51", client.api.api_version

    pulled = client.images.pull(image)
    assert image in pulled.tags, pulled.tags
    assert any(image in i.tags for i in client.images.list())
    try:
        client.images.get("absent:v1")
        raise AssertionError("an absent image was found")
    except ImageNotFound:
        pass

    # An import from a tarball made here, with a change.
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        data = b"imported by the sdk\n"
        info = tarfile.TarInfo("etc/motd")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    client.api.import_image_from_data(
        layer.getvalue(), repository="sdk/imported", tag="v1", changes=['CMD ["cat", "/etc/motd"]']
    )
    imported = client.images.get("sdk/imported:v1")
    assert imported.attrs["Config"]["Cmd"] == ["cat", "/etc/motd"], imported.attrs["Config"]
    assert len(imported.attrs["RootFS"]["Layers"]) == 1, imported.attrs["RootFS"]

    created = client.containers.create(image, ["echo", "hi"], name="sdk-one", labels={"via": "sdk"})
    assert created.status == "created", created.status
    assert [c.name for c in client.containers.list(all=True, filters={"label": "via=sdk"})] == ["sdk-one"]
    try:
        client.containers.create(image, ["true"], name="sdk-one")
        raise AssertionError("a duplicate name was accepted")
    except APIError as e:
        assert e.status_code == 409, e
    created.rename("sdk-two")
    assert client.containers.get("sdk-two").id == created.id

    if run:
        assert client.containers.run(image, ["sh", "-c", "echo from sdk"], remove=True) == b"from sdk\n"
        detached = client.containers.run(image, ["sh", "-c", "echo up; sleep 600"], detach=True)
        for _ in range(600):
            if detached.logs() == b"up\n":
                break
            time.sleep(0.1)
        assert detached.logs() == b"up\n", detached.logs()
        # An attach for the output so far only (no stream) returns with it.
        assert detached.attach(stdout=True, stderr=True, logs=True, stream=False) == b"up\n"
        detached.reload()
        assert detached.status == "running", detached.status
        # Started means running: a pause at once is taken (no 409).
        detached.pause()
        detached.reload()
        assert detached.status == "paused", detached.status
        detached.unpause()
        execs_in_every_start_mode(client, detached)
        attach_cancelled_loses_nothing(client, image)
        # A commit of the running container, with a change, runs as its own image.
        detached.exec_run(["sh", "-c", "echo committed > /note"])
        committed = detached.commit(repository="sdk/committed", tag="v1", changes=['CMD ["cat", "/note"]'], message="m")
        assert committed.attrs["Comment"] == "m", committed.attrs
        assert client.containers.run("sdk/committed:v1", remove=True) == b"committed\n"
        detached.kill()
        assert detached.wait()["StatusCode"] == 137
        detached.remove()
        # A command that is not there fails the start with Docker's 400.
        try:
            client.containers.run(image, ["no-such-command"], detach=True, name="sdk-missing")
            raise AssertionError("a missing command started")
        except APIError as e:
            assert e.status_code == 400, e
            assert "executable file not found" in str(e), e
        missing = client.containers.get("sdk-missing")
        assert missing.attrs["State"]["ExitCode"] == 127, missing.attrs["State"]
        assert "executable file not found" in missing.attrs["State"]["Error"], missing.attrs["State"]
        missing.remove()

    created.remove()
    try:
        client.containers.get("sdk-two")
        raise AssertionError("a removed container was found")
    except NotFound:
        pass
    print("sdk ok")


def frames(raw):
    """Splits dockerd's multiplexed stream into (stream, bytes) frames."""
    out, at = [], 0
    while at < len(raw):
        kind, size = struct.unpack(">BxxxL", raw[at : at + 8])
        out.append((kind, raw[at + 8 : at + 8 + size]))
        at += 8 + size
    return out


def read_all(sock):
    """Everything the hijacked socket `exec_start(socket=True)` gave sends."""
    raw = getattr(sock, "_sock", sock)
    data = b""
    while True:
        chunk = raw.recv(65536)
        if not chunk:
            raw.close()
            return data
        data += chunk


def execs_in_every_start_mode(client, container):
    """Exec output framed as dockerd frames it, whichever way it is started:
    multiplexed without a terminal, raw with one; attached, streamed,
    detached and on the hijacked socket; and exec inspect complete."""
    api = client.api
    result = container.exec_run(["sh", "-c", "echo out; echo err >&2; exit 3"], demux=True)
    assert result.exit_code == 3, result
    assert result.output == (b"out\n", b"err\n"), result.output
    result = container.exec_run(["sh", "-c", "echo out; echo err >&2"], tty=True)
    assert result.output == b"out\r\nerr\r\n", result.output
    streamed = container.exec_run(["sh", "-c", "echo a; echo b"], stream=True)
    assert b"".join(streamed.output) == b"a\nb\n"

    # Detached: the call returns at once, the exec runs on, inspect follows it.
    exec_id = api.exec_create(container.id, ["sh", "-c", "sleep 1; echo late > /late"], tty=True)["Id"]
    api.exec_start(exec_id, detach=True)
    info = api.exec_inspect(exec_id)
    assert info["ProcessConfig"]["tty"] is True, info
    assert info["ProcessConfig"]["entrypoint"] == "sh", info
    assert info["OpenStdin"] is False and info["ContainerID"] == container.id, info
    for _ in range(600):
        info = api.exec_inspect(exec_id)
        if not info["Running"]:
            break
        time.sleep(0.1)
    assert info["Running"] is False and info["ExitCode"] == 0, info
    assert container.exec_run(["cat", "/late"]).output == b"late\n"

    # The hijacked socket: frames without a terminal, raw bytes with one.
    exec_id = api.exec_create(container.id, ["sh", "-c", "echo one; echo two >&2"])["Id"]
    streams = {}
    for kind, data in frames(read_all(api.exec_start(exec_id, socket=True))):
        streams[kind] = streams.get(kind, b"") + data
    assert streams == {1: b"one\n", 2: b"two\n"}, streams
    exec_id = api.exec_create(container.id, ["sh", "-c", "echo raw"], tty=True)["Id"]
    raw = read_all(api.exec_start(exec_id, socket=True, tty=True))
    assert raw == b"raw\r\n", raw
    assert api.exec_inspect(exec_id)["ExitCode"] == 0


def attach_cancelled_loses_nothing(client, image):
    """A streaming attach cancelled part way: the container runs on, its log
    has every line, and a new attach (logs and stream) gets them all and
    goes on."""
    script = "i=0; while [ $i -lt 100000 ]; do echo $i; i=$((i+1)); sleep 0.05; done"
    counter = client.containers.run(image, ["sh", "-c", script], detach=True)
    stream = counter.attach(stdout=True, stderr=True, stream=True, logs=False)
    first = next(stream)
    assert first.strip(), first
    stream.close()
    time.sleep(1)
    counter.reload()
    assert counter.status == "running", counter.status
    lines = counter.logs().split()
    assert len(lines) > 5 and lines == [str(i).encode() for i in range(len(lines))], lines
    again = counter.attach(stdout=True, stderr=True, stream=True, logs=True)
    got = b""
    while got.count(b"\n") < len(lines) + 5:
        got += next(again)
    again.close()
    seen = got.split()
    assert seen[: len(lines) + 5] == [str(i).encode() for i in range(len(lines) + 5)], seen
    counter.remove(force=True)


if __name__ == "__main__":
    main()
