"""A local S3 object store for the tests: moto's server as a real subprocess on 127.0.0.1.

Beam's S3 filesystem (apache_beam/io/aws) talks to it through boto3 with `--s3_endpoint_url`, as it
would to any S3-compatible store, so these flags are all a pipeline needs to reach it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# moto accepts any credentials; a real cluster's come from its own environment or these same flags.
ACCESS_KEY, SECRET_KEY, REGION = "simulforge-test", "simulforge-test-secret", "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    """SIGINT first: the worker pool then stops its workers and waits for them."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class S3Server:
    """moto's S3 server on a free port, with a boto3 client for the test's own uploads and reads."""

    def __init__(self, cwd: Path, log: Path, prefix: tuple[str, ...] = ()):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc)
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                                   aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def beam_args(self) -> list[str]:
        """What a pipeline (the launcher and, through its options, every worker) needs to reach the store."""
        return [f"--s3_endpoint_url={self.endpoint}", f"--s3_region_name={REGION}",
                f"--s3_access_key_id={ACCESS_KEY}", f"--s3_secret_access_key={SECRET_KEY}"]

    def env(self) -> dict[str, str]:
        """The same credentials as a cluster's worker environment would hold them."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION}

    def make_bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def upload_tree(self, local: Path, url: str) -> int:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        count = 0
        for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            key = "/".join(filter(None, [prefix.rstrip("/"), path.relative_to(local).as_posix()]))
            self.client.upload_file(str(path), bucket, key)
            count += 1
        return count

    def keys(self, url: str) -> list[str]:
        """Keys under `url` (an s3://bucket/prefix), relative to it."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out += [o["Key"][len(prefix):] for o in page.get("Contents", [])]
        return sorted(out)

    def download_tree(self, url: str, local: Path) -> list[str]:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        names = self.keys(url)
        for name in names:
            dest = Path(local) / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(bucket, "/".join(filter(None, [prefix.rstrip("/"), name])), str(dest))
        return names

    def close(self) -> None:
        stop(self.proc)
        self._log.close()


class WorkerPool:
    """Beam's external worker pool (worker_pool_main) as its own process, in an empty folder of its own,
    with the store's credentials in its environment as a cluster's worker pods would have them.
    Each SDK worker it starts runs `boot`, which fetches the job's pipeline options from the runner."""

    def __init__(self, cwd: Path, log: Path, boot: str, env: dict[str, str], prefix: tuple[str, ...] = ()):
        self.port = free_port()
        self._log = open(log, "wb")
        self.home = Path(cwd).parent / "home"  # a pod's own HOME (caches of numba, matplotlib, ...)
        self.home.mkdir(exist_ok=True)
        keep = {k: v for k, v in os.environ.items()
                if k in ("PATH", "LANG", "LC_ALL", "PYTHONUTF8", "OMP_NUM_THREADS", "PYTHONPATH")}
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
             f"--service_port={self.port}", f"--container_executable={boot}"],
            cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, env={**keep, "HOME": str(self.home), **env})
        wait_for_port(self.port, self.proc)

    def beam_args(self) -> list[str]:
        return ["--environment_type=EXTERNAL", f"--environment_config=127.0.0.1:{self.port}"]

    def close(self) -> None:
        stop(self.proc)
        self._log.close()
