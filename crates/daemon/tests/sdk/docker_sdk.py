"""The Docker SDK for Python (the `docker` package) against hulld, without
the CLI. Usage: docker_sdk.py SOCKET IMAGE [--run]; --run also runs
containers (needs a machine that can run VMs). Exits non-zero on failure."""

import io
import sys
import tarfile

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
            import time

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


if __name__ == "__main__":
    main()
