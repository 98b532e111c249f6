"""The Docker SDK for Python (the `docker` package) against hulld, without
the CLI. Usage: docker_sdk.py SOCKET IMAGE [--run]; --run also runs
containers (needs a machine that can run VMs). Exits non-zero on failure."""

import sys

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
        detached.reload()
        assert detached.status == "running", detached.status
        detached.kill()
        assert detached.wait()["StatusCode"] == 137
        detached.remove()

    created.remove()
    try:
        client.containers.get("sdk-two")
        raise AssertionError("a removed container was found")
    except NotFound:
        pass
    print("sdk ok")


if __name__ == "__main__":
    main()
