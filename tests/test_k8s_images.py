"""Images pinned by digest: reference parsing, `make pin-images` against a local registry, and the deploy check."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import yaml

from k8s.validate import pin_images
from k8s.validate.driver import validate
from k8s.validate.images import parse_reference
from tests.test_k8s import KUBECTL, VERSION


@pytest.mark.parametrize("reference, expected", [
    ("busybox:1.36.1", ("docker.io", "library/busybox", "1.36.1", None)),
    ("tensorflow/serving:2.21.0-gpu", ("docker.io", "tensorflow/serving", "2.21.0-gpu", None)),
    ("localhost:5000/team/app", ("localhost:5000", "team/app", None, None)),
    ("ghcr.io/org/app:1@sha256:" + "a" * 64, ("ghcr.io", "org/app", "1", "sha256:" + "a" * 64)),
    ("registry.invalid/detserve/web-demo:0.1.0", ("registry.invalid", "detserve/web-demo", "0.1.0", None)),
])
def test_references_parse_as_docker_does(reference, expected):
    parsed = parse_reference(reference)
    assert (parsed.registry, parsed.repository, parsed.tag, parsed.digest) == expected
    assert parsed.pinned == (expected[3] is not None)


def _digest(repository: str, tag: str, generation: int) -> str:
    return "sha256:" + hashlib.sha256(f"{repository}:{tag}:{generation}".encode()).hexdigest()


class FakeRegistry(http.server.BaseHTTPRequestHandler):
    """Docker Hub's protocol in miniature: 401 with a Bearer challenge, an anonymous token, HEAD of a manifest."""

    generation = 1
    requests_seen: list[str] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # the token endpoint
        self.requests_seen.append(self.path)
        scope = self.path.partition("scope=")[2]
        body = f'{{"token": "anonymous-{scope}"}}'.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        repository, _, tag = self.path.removeprefix("/v2/").partition("/manifests/")
        port = self.server.server_address[1]
        if not self.headers.get("Authorization", "").startswith("Bearer anonymous-repository"):
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://127.0.0.1:{port}/token",'
                                                 f'service="fake",scope="repository:{repository}:pull"')
            self.end_headers()
            return
        if "application/vnd.oci.image.index.v1+json" not in self.headers.get("Accept", "") or tag == "missing":
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Docker-Content-Digest", _digest(repository, tag, self.generation))
        self.end_headers()


@pytest.fixture
def registry():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeRegistry.generation, FakeRegistry.requests_seen = 1, []
    yield f"docker.io=http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _rendered_images(root: Path, require_digests: bool):
    report = validate(root, VERSION, KUBECTL, run_lint=False, require_digests=require_digests,
                      only=("overlays/gpu", "overlays/cpu", "jobs/train", "tools/model-upload",
                            "components/model-sync", "components/web-demo"))
    images = {c["image"] for objs in report.rendered.values() for o in objs
              for c in ((o.get("spec") or {}).get("template") or o).get("spec", {}).get("containers", [])
              + ((o.get("spec") or {}).get("template") or o).get("spec", {}).get("initContainers", [])}
    return report, images


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not found: needed to render overlays")
def test_pin_images_writes_digests_that_kustomize_renders_and_deploy_requires(copy_root, registry, capsys):
    # As shipped (offline), nothing is pinned: validation notes it, a deploy refuses it.
    report, images = _rendered_images(copy_root, require_digests=True)
    assert any("tensorflow/serving:2.21.0-gpu is not pinned by digest" in e for e in report.errors)
    assert any("registry.invalid/set-your-registry/detserve-training:0.1.0 is a placeholder" in e
               for e in report.errors)

    gpu_kustomization = copy_root / "k8s/overlays/gpu/kustomization.yaml"
    before = gpu_kustomization.read_text()
    assert pin_images.main(["--root", str(copy_root), "--registry-api", registry]) == 0
    # Only digest lines were added: every other line (comments included) is as it was.
    after = gpu_kustomization.read_text()
    assert [line for line in after.splitlines() if "digest:" not in line] == before.splitlines()
    entry = yaml.safe_load(after)["images"][0]
    assert entry["digest"] == _digest("tensorflow/serving", "2.21.0-gpu", 1)
    assert any(p.startswith("/token?") and "scope=repository%3Alibrary%2Fbusybox%3Apull" in p
               for p in FakeRegistry.requests_seen), FakeRegistry.requests_seen

    report, images = _rendered_images(copy_root, require_digests=True)
    assert f"tensorflow/serving:2.21.0-gpu@{_digest('tensorflow/serving', '2.21.0-gpu', 1)}" in images
    assert f"busybox:1.36.1@{_digest('library/busybox', '1.36.1', 1)}" in images
    assert f"rclone/rclone:1.68.2@{_digest('rclone/rclone', '1.68.2', 1)}" in images
    # What is left for a deploy are the images only you can build.
    assert sorted(e.split(": image ")[1].split()[0] for e in report.errors) == [
        "registry.invalid/detserve/web-demo:0.1.0", "registry.invalid/set-your-registry/detserve-training:0.1.0"]

    # Unchanged tags: --check passes. A tag moved to other bytes: --check fails naming it, and a re-pin updates it.
    assert pin_images.main(["--root", str(copy_root), "--registry-api", registry, "--check"]) == 0
    FakeRegistry.generation = 2
    capsys.readouterr()
    assert pin_images.main(["--root", str(copy_root), "--registry-api", registry, "--check"]) == 1
    assert "tensorflow/serving:2.21.0-gpu: registry has " + _digest("tensorflow/serving", "2.21.0-gpu", 2) \
        in capsys.readouterr().err
    assert pin_images.main(["--root", str(copy_root), "--registry-api", registry]) == 0
    assert yaml.safe_load(gpu_kustomization.read_text())["images"][0]["digest"] == \
        _digest("tensorflow/serving", "2.21.0-gpu", 2)
    assert gpu_kustomization.read_text().count("digest:") == 1


def test_a_tag_the_registry_does_not_have_is_an_error_naming_it(registry):
    with pytest.raises(pin_images.PinError, match=r"tensorflow/serving:missing: .* answered HTTP 404"):
        pin_images.registry_digest("tensorflow/serving", "missing", dict([registry.split("=", 1)]))


def test_an_unreachable_registry_is_an_error_naming_it():
    with pytest.raises(pin_images.PinError, match=r"busybox:1\.36\.1: http://127\.0\.0\.1:9/v2/library/busybox"):
        pin_images.registry_digest("busybox", "1.36.1", {"docker.io": "http://127.0.0.1:9"})
