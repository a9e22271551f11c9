"""The lab image, built without any container registry.

Two images, each tagged with a hash of its inputs so it is rebuilt only when they change:

* ``ims-migrate-lab-base:<hash>``: a minimal Debian bookworm rootfs (debootstrap, variant minbase,
  from the host's apt mirror; ``netlab/images/build_offline.sh``) imported with the Docker SDK.
  Inputs: the build script (it holds the package list).
* ``ims-migrate-lab:<hash>``: ``netlab/images/Dockerfile.lab`` on top of the base, built with the
  network off: a virtualenv ``/opt/ims-venv`` with the project's runtime dependencies (with the
  ``sippy`` extra) at exactly the versions installed on the host, from a wheelhouse prepared on
  the host with pip (the host reaches PyPI, containers do not), then the project itself.
  Inputs: base hash, Dockerfile.lab, the pinned requirement list, the project's source files.

Caches live in ``$IMS_LAB_CACHE`` (default ``/var/cache/ims-migrate``): the rootfs, the wheelhouse.
``python -m netlab.image`` builds (or finds) the image and prints its tag.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from importlib import metadata

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES_DIR = os.path.join(ROOT, "netlab", "images")
BUILD_SCRIPT = os.path.join(IMAGES_DIR, "build_offline.sh")
DOCKERFILE = os.path.join(IMAGES_DIR, "Dockerfile.lab")
REPO = "ims-migrate-lab"
BASE_REPO = "ims-migrate-lab-base"
IMAGE_LABEL = "ims-migrate.image"        # value: "base" or "lab"
VENV_PYTHON = "/opt/ims-venv/bin/python"
EXTRAS = ("sippy",)
BUILD_REQUIREMENTS = ("setuptools", "wheel")   # to install the project inside the image, offline
PACKAGES = ("sipcore", "assembly", "legacy", "refactored", "netlab", "harness")


class ImageBuildError(RuntimeError):
    """The lab image could not be built; the message says which step and why."""


def cache_dir() -> str:
    return os.environ.get("IMS_LAB_CACHE", "/var/cache/ims-migrate")


# --- inputs ----------------------------------------------------------------------------------
def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# The lab image's interpreter: Debian bookworm's python3 (build_offline.sh and Dockerfile use
# bookworm). Requirement markers are judged for it as well as for the host's Python, because a
# dependency may apply only to the older one (redis needs async-timeout below 3.11.3).
IMAGE_PYTHON = "3.11.2"


def _wanted(req, extra: str, host: bool = True) -> bool:
    """Does ``req`` apply on the host (when ``host``) or inside the lab image?"""
    if not req.marker:
        return True
    if host and req.marker.evaluate({"extra": extra}):
        return True
    image_env = {"extra": extra, "python_full_version": IMAGE_PYTHON,
                 "python_version": ".".join(IMAGE_PYTHON.split(".")[:2])}
    return bool(req.marker.evaluate(image_env))


def runtime_pins(extras: tuple[str, ...] = EXTRAS) -> list[str]:
    """``name==version`` for the project's runtime dependencies (and theirs), as installed here."""
    from packaging.requirements import Requirement

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    roots = list(project.get("dependencies", []))
    for extra in extras:
        roots += project.get("optional-dependencies", {}).get(extra, [])
    pins: dict[str, str] = {}
    todo = [(Requirement(r), "") for r in roots]
    while todo:
        req, parent_extra = todo.pop()
        if not _wanted(req, parent_extra):
            continue
        key = _canonical(req.name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            if not _wanted(req, parent_extra, host=False):
                raise ImageBuildError(f"{req.name} is not installed in {sys.prefix}; run scripts/setup.sh first") from None
            # Needed only by the image's older Python (e.g. redis wants async-timeout below 3.11.3):
            # not installed here, so the wheelhouse fetches the newest release the requirement allows.
            pins.setdefault(key, f"{req.name}{req.specifier}")
            continue
        first_visit = key not in pins
        pins[key] = f"{dist.metadata['Name']}=={dist.version}"
        if not first_visit and not req.extras:
            continue
        for sub in dist.requires or []:
            sub_req = Requirement(sub)
            for extra in ("", *sorted(req.extras)):
                if _wanted(sub_req, extra):
                    todo.append((sub_req, extra))
                    break
    for name in BUILD_REQUIREMENTS:
        try:
            pins.setdefault(_canonical(name), f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.setdefault(_canonical(name), name)
    return sorted(pins.values(), key=str.lower)


def project_files() -> list[str]:
    """The files that make up the installed project, relative to the repository root."""
    out = ["pyproject.toml", "README.md"]
    for pkg in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, pkg)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if not name.endswith((".pyc", ".pyo")):
                    out.append(os.path.relpath(os.path.join(dirpath, name), ROOT))
    return out


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()[:12]


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


@dataclass(frozen=True)
class ImageInputs:
    base_hash: str
    deps_hash: str
    image_hash: str
    pins: tuple[str, ...]
    files: tuple[str, ...]

    @property
    def base_tag(self) -> str:
        return f"{BASE_REPO}:{self.base_hash}"

    @property
    def tag(self) -> str:
        return f"{REPO}:{self.image_hash}"


def image_inputs() -> ImageInputs:
    pins = runtime_pins()
    files = project_files()
    base_hash = _digest([b"base-1", _read(BUILD_SCRIPT)])
    deps_hash = _digest([b"deps-1", "\n".join(pins).encode()])
    parts = [b"image-1", base_hash.encode(), deps_hash.encode(), _read(DOCKERFILE)]
    for rel in files:
        parts += [rel.encode(), _read(os.path.join(ROOT, rel))]
    return ImageInputs(base_hash, deps_hash, _digest(parts), tuple(pins), tuple(files))


def image_tag() -> str:
    """The tag ``ensure_image()`` builds for the current inputs (without building anything)."""
    return image_inputs().tag


# --- docker ------------------------------------------------------------------------------------
def docker_client():
    """A Docker SDK client whose engine answers, or a RuntimeError that says how to start one."""
    try:
        import docker
    except ImportError:
        raise RuntimeError("the docker SDK is missing (pip install docker)") from None
    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except Exception as exc:   # noqa: BLE001 - the SDK raises several unrelated types here
        raise RuntimeError(f"no Docker engine answers ({exc}); start one with: bash scripts/docker-engine.sh") from None


def _has_image(client, tag: str) -> bool:
    import docker.errors
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


class _BuildLock:
    """One build at a time on this machine (parallel test workers share the cache)."""

    def __init__(self, path: str):
        self.path, self.fh = path, None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fh = open(self.path, "w")
        deadline = time.monotonic() + 1800
        while True:
            try:
                fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ImageBuildError(f"another image build holds {self.path} for 30 minutes") from None
                time.sleep(0.5)

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def ensure_base(client, inputs: ImageInputs) -> str:
    """Import the debootstrap rootfs as ``ims-migrate-lab-base:<hash>`` unless it exists."""
    tag = inputs.base_tag
    if _has_image(client, tag):
        return tag
    rootfs = os.path.join(cache_dir(), f"rootfs-{inputs.base_hash}")
    t0 = time.monotonic()
    proc = subprocess.run(["bash", BUILD_SCRIPT, "--rootfs", rootfs], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise ImageBuildError(f"debootstrap of the lab rootfs failed: {proc.stderr.strip()[-1500:]}")
    log.info("rootfs %s ready in %.1fs", rootfs, time.monotonic() - t0)
    with tempfile.NamedTemporaryFile(dir=cache_dir(), suffix=".tar") as tar:
        subprocess.run(["tar", "-C", rootfs, "--numeric-owner", "-cf", tar.name, "."], check=True,
                       capture_output=True, timeout=600)
        repo, _, version = tag.partition(":")
        client.api.import_image(src=tar.name, repository=repo, tag=version,
                                changes=['CMD ["sleep", "infinity"]', f"LABEL {IMAGE_LABEL}=base"])
    if not _has_image(client, tag):
        raise ImageBuildError(f"docker import of {rootfs} did not produce {tag}")
    log.info("imported %s", tag)
    return tag


def ensure_wheelhouse(inputs: ImageInputs) -> str:
    """Wheels of the pinned runtime requirements, fetched on the host (cached per pin set)."""
    dest = os.path.join(cache_dir(), f"wheelhouse-{inputs.deps_hash}")
    if os.path.exists(os.path.join(dest, "requirements.txt")):
        return dest
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                               "-q", "--wheel-dir", tmp, *inputs.pins],
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise ImageBuildError("fetching the lab image's Python wheels on the host failed (the host needs "
                                  f"PyPI or a local index): {proc.stderr.strip()[-1500:]}")
        with open(os.path.join(tmp, "requirements.txt"), "w") as fh:
            fh.write("\n".join(inputs.pins) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _build_context(inputs: ImageInputs, wheelhouse: str, ctx: str) -> None:
    shutil.copy(DOCKERFILE, os.path.join(ctx, "Dockerfile"))
    shutil.copytree(wheelhouse, os.path.join(ctx, "wheelhouse"), copy_function=_link_or_copy)
    for rel in inputs.files:
        target = os.path.join(ctx, "project", rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(ROOT, rel), target)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def ensure_image(tag: str | None = None, *, client=None) -> str:
    """Return a tag of the lab image, building what is missing (base, wheelhouse, project layer).

    ``tag`` defaults to ``ims-migrate-lab:<hash of the inputs>``; a second call with unchanged
    inputs only looks the tag up."""
    client = client or docker_client()
    inputs = image_inputs()
    tag = tag or inputs.tag
    if _has_image(client, tag):
        return tag
    with _BuildLock(os.path.join(cache_dir(), "build.lock")):
        if _has_image(client, tag):            # built by a parallel worker meanwhile
            return tag
        t0 = time.monotonic()
        base = ensure_base(client, inputs)
        wheelhouse = ensure_wheelhouse(inputs)
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="ctx-") as ctx:
            _build_context(inputs, wheelhouse, ctx)
            import docker.errors
            try:
                client.images.build(path=ctx, tag=tag, buildargs={"BASE": base}, network_mode="none", rm=True,
                                    forcerm=True, labels={IMAGE_LABEL: "lab", f"{IMAGE_LABEL}.base": base},
                                    timeout=1800)
            except docker.errors.BuildError as exc:
                lines = [c.get("stream", "") or c.get("error", "") for c in exc.build_log]
                raise ImageBuildError(f"docker build of {tag} failed: {''.join(lines)[-1500:]}") from None
            except docker.errors.APIError as exc:
                raise ImageBuildError(f"docker build of {tag} failed: {exc}") from None
        log.info("built %s in %.1fs", tag, time.monotonic() - t0)
        _remove_stale(client, inputs, keep=tag)
    return tag


def _remove_stale(client, inputs: ImageInputs, keep: str) -> None:
    """Drop older images and caches of this builder (never forced: an image in use stays)."""
    import docker.errors
    for repo, kind, current in ((REPO, "lab", keep), (BASE_REPO, "base", inputs.base_tag)):
        for image in client.images.list(name=repo, filters={"label": f"{IMAGE_LABEL}={kind}"}):
            for t in image.tags:
                if t == current:
                    continue
                try:
                    client.images.remove(t)
                    log.info("removed stale image %s", t)
                except docker.errors.APIError:
                    pass
    current_dirs = {f"rootfs-{inputs.base_hash}", f"wheelhouse-{inputs.deps_hash}"}
    for name in os.listdir(cache_dir()):
        if re.fullmatch(r"(rootfs|wheelhouse)-[0-9a-f]{12}", name) and name not in current_dirs:
            shutil.rmtree(os.path.join(cache_dir(), name), ignore_errors=True)
            log.info("removed stale cache %s", name)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        t0 = time.monotonic()
        tag = ensure_image()
    except (ImageBuildError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{tag} ({time.monotonic() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
