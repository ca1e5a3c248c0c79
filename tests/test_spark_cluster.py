"""Spark beyond local mode (issue 13 item 7): a real standalone cluster on 127.0.0.1 — a master and two
one-core workers started with pyspark's own `spark-class` — runs `moodlens spark-batch --master spark://...`
against the local Ceph S3 server: with a worker SIGKILLed mid-job (Spark retries its task) the output equals
`moodlens batch`, every image exactly once; so does a rerun after the driver is SIGKILLed mid-job.

The executors run this venv's Python (`--conf spark.pyspark.python=...`, as a packed venv would on a real
cluster) and get the S3 credentials from the workers' environment (as from instance roles on real nodes).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.dataset as ds
import pytest

pytest_plugins = ["s3_server"]
if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs Java (openjdk-17-jre-headless)", allow_module_level=True)

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")]

SPARK_HOME = Path(pytest.importorskip("pyspark").__file__).parent  # pip's pyspark is a Spark distribution
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"
PARTITIONS = 12  # 20-odd images a task: long enough tasks to be caught running, few enough to stay quick
# small short-lived JVMs on 2 cores: no C2 compiler threads, one GC thread
JAVA_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
TIMINGS: dict[str, float] = {}  # printed at the end (pytest -s): the figures docs/scaleout.md quotes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.load(r)


def _wait(condition: Callable[[], object], what: str, timeout: float, procs=()) -> object:
    """Poll `condition` until it returns something truthy (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"{what}: {p.args[:2]} exited with {p.returncode}"
        with contextlib.suppress(OSError, ValueError, KeyError):
            found = condition()
            if found:
                return found
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Cluster:
    """A standalone master and workers, each in its own session (a SIGKILL of the group is a node dying)."""

    dir: Path
    env: dict[str, str]
    master_port: int = field(default_factory=_free_port)
    ui_port: int = field(default_factory=_free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    drivers: list[subprocess.Popen] = field(default_factory=list)  # killed at the end if a test left one

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    def _start(self, name: str, *args: str) -> None:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - the daemon writes it while it runs
        self.procs[name] = subprocess.Popen([str(SPARK_CLASS), *args], env=self.env, stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def start(self, workers: int) -> None:
        self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                    "--port", str(self.master_port), "--webui-port", str(self.ui_port))
        for i in range(workers):
            self.start_worker(i)
        self.wait_workers(workers)

    def start_worker(self, i: int) -> None:
        self._start(f"worker-{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                    "--cores", "1", "--memory", "768m", "--webui-port", "0",
                    "--work-dir", str(self.dir / f"worker-{i}"), self.url)

    def wait_workers(self, n: int, timeout: float = 120) -> None:
        def ready():
            return _get_json(f"http://127.0.0.1:{self.ui_port}/json/")["aliveworkers"] == n

        _wait(ready, f"{n} workers registered", timeout, self.procs.values())

    def worker_of(self, app_id: str, executor_id: str) -> str:
        """Which worker runs an executor: its work dir holds <app>/<executor>/."""
        return next(n for n in self.procs if (self.dir / n / app_id / executor_id).is_dir())

    def task_attempts(self, app_id: str) -> dict[str, set[str]]:
        """Per worker, the task attempts ("3.0", "3.1", ...) its executors ran for an app. (The driver logs a
        task lost with its executor at INFO only, so the executors' logs tell.)"""
        out = {}
        for folder in (p for p in self.dir.glob("worker-*") if p.is_dir()):
            text = "".join(f.read_text(errors="replace") for f in (folder / app_id).glob("*/stderr"))
            out[folder.name] = set(re.findall(r"Running task (\S+) in stage", text))
        return out

    def processes_in(self, name: str) -> list[int]:
        """Live processes working in a worker's folder: its executor JVMs and their Python daemons/workers."""
        root, pids = str(self.dir / name), []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/cwd").startswith(root + os.sep):
                    pids.append(int(pid))
        return pids

    def kill(self, name: str) -> None:
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs.pop(name).wait()

    def stop(self) -> None:
        for proc in (p for p in self.drivers if p.poll() is None):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for name in list(self.procs):
            with contextlib.suppress(ProcessLookupError):
                self.kill(name)


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    if not SPARK_CLASS.exists():
        pytest.skip(f"no {SPARK_CLASS}")
    directory = tmp_path_factory.mktemp("spark-cluster")
    env = {**os.environ, **s3_server.env(), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "256m",
           "SPARK_HOME": str(SPARK_HOME),
           # no REST submission server: it would take the fixed port 6066
           "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
           "SPARK_DAEMON_JAVA_OPTS": JAVA_OPTS}
    for name in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):  # the executors' Python comes from --conf
        env.pop(name, None)
    c = Cluster(directory, env)
    t0 = time.perf_counter()
    try:
        c.start(workers=2)
        TIMINGS["cluster start (master + 2 workers registered), s"] = time.perf_counter() - t0
        yield c
    finally:
        c.stop()
        print("\nspark cluster figures:", {k: round(v, 1) for k, v in TIMINGS.items()})


@pytest.fixture(scope="module")
def s3_photos(s3_server, photo_set):
    """The photo set uploaded to a fresh bucket: (bucket, s3://bucket/photos)."""
    from s3_server import upload_tree

    bucket = s3_server.new_bucket()
    return bucket, upload_tree(s3_server, photo_set, bucket, "photos")


@dataclass
class Driver:
    """`python -m moodlens spark-batch` against the cluster, in its own session (driver Python + its JVM)."""

    proc: subprocess.Popen
    ui_port: int
    log: Path
    app_id_seen: str = ""

    def app_id(self) -> str:
        return _get_json(f"http://127.0.0.1:{self.ui_port}/api/v1/applications")[0]["id"]

    def executors(self) -> list[dict]:
        url = f"http://127.0.0.1:{self.ui_port}/api/v1/applications/{self.app_id()}/executors"
        return [e for e in _get_json(url) if e["id"] != "driver"]

    def finish(self, timeout: float = 240) -> tuple[int, str]:
        rc = self.proc.wait(timeout)
        return rc, self.log.read_text(errors="replace")


def _spark_batch(cluster: Cluster, src: str, dest: str, log: Path) -> Driver:
    ui_port = _free_port()
    args = [sys.executable, "-m", "moodlens", "spark-batch", src, dest, "--master", cluster.url,
            "--partitions", str(PARTITIONS), "--conf", f"spark.pyspark.python={sys.executable}",
            "--conf", "spark.executor.memory=512m", "--conf", f"spark.ui.port={ui_port}",
            "--conf", f"spark.executor.extraJavaOptions={JAVA_OPTS}",
            "--conf", f"spark.driver.extraJavaOptions={JAVA_OPTS}",
            "--conf", "spark.ui.showConsoleProgress=false"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=cluster.env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    cluster.drivers.append(proc)
    return Driver(proc, ui_port, log)


def _read_s3(s3_server, url: str):
    fs = s3_server.filesystem()
    return ds.dataset(url.removeprefix("s3://"), format="parquet", filesystem=fs,
                      exclude_invalid_files=True).to_table()


def _assert_equals_batch(s3_server, dest: str, src: str, photo_set, photo_set_batch) -> None:
    """Same rows as `moodlens batch` (so every image exactly once) and the same file metadata."""
    import pyarrow.parquet as pq

    from s3_server import assert_same_rows

    out = _read_s3(s3_server, dest)
    assert_same_rows(out, photo_set_batch, strip_a=src + "/", strip_b=str(photo_set) + "/")
    fs = s3_server.filesystem()
    parts = [k for k in fs.ls(dest.removeprefix("s3://")) if k.endswith(".parquet")]
    assert len(parts) == PARTITIONS
    keys = (b"moodlens_version", b"model", b"classes")
    expected = {k: photo_set_batch.schema.metadata[k] for k in keys}
    for part in parts:
        with fs.open(part) as f:
            assert {k: pq.read_schema(f).metadata[k] for k in keys} == expected


def _run_ok(driver: Driver, photo_set_batch, what: str) -> str:
    rc, log = driver.finish()
    assert rc == 1, f"{what}: exit {rc}\n{log[-4000:]}"  # 1: the three broken images failed, as in batch
    images = len(set(photo_set_batch.column("path").to_pylist()))
    assert f"\n{images} images, " in log and " 3 errors" in log, log[-4000:]  # counted once, retries or not
    return log


def _kill_driver(driver: Driver) -> None:
    os.killpg(driver.proc.pid, signal.SIGKILL)
    driver.proc.wait()


def test_cluster_rerun_after_a_killed_driver_equals_batch(cluster, s3_server, s3_photos, photo_set,
                                                           photo_set_batch, tmp_path):
    """A run whose driver is SIGKILLed mid-job leaves nothing at DEST (its parts are in
    DEST.incomplete/<app>/); the rerun equals `moodlens batch`: it loses and duplicates nothing."""
    bucket, src = s3_photos
    dest = f"s3://{bucket}/out"
    driver = _spark_batch(cluster, src, dest, tmp_path / "killed.log")
    # SIGKILL once a task has written its part and others are still running: a half-written run
    _wait(lambda: sum(e["completedTasks"] for e in driver.executors()) >= 1
          and sum(e["activeTasks"] for e in driver.executors()) >= 1, "a finished task", 240, [driver.proc])
    _kill_driver(driver)
    fs = s3_server.filesystem()
    assert any(k.endswith(".parquet") for k in fs.find(f"{bucket}/out.incomplete"))
    assert not fs.find(f"{bucket}/out")  # nothing that could be read as a (partial) output
    # the master sees the driver gone, stops its executors and frees the workers for the rerun
    _wait(lambda: not _get_json(f"http://127.0.0.1:{cluster.ui_port}/json/")["activeapps"], "app removed", 60)

    t0 = time.perf_counter()
    _run_ok(_spark_batch(cluster, src, dest, tmp_path / "rerun.log"), photo_set_batch, "rerun")
    TIMINGS["rerun after the driver kill (driver start to exit), s"] = time.perf_counter() - t0
    _assert_equals_batch(s3_server, dest, src, photo_set, photo_set_batch)
    assert not s3_server.filesystem().find(f"{bucket}/out.incomplete")  # no staging left


def test_cluster_worker_killed_mid_job(cluster, s3_server, s3_photos, photo_set, photo_set_batch, tmp_path):
    """A worker (its JVM and its executor's) SIGKILLed while its executor runs a task: Spark reruns the task
    on the other worker and the output equals `moodlens batch`. Last in the module: it leaves one worker."""
    bucket, src = s3_photos
    dest = f"s3://{bucket}/worker-killed"
    t0 = time.perf_counter()
    driver = _spark_batch(cluster, src, dest, tmp_path / "driver.log")

    def busy_executor():  # an executor with a task running, while tasks are left for the other one
        execs = driver.executors()
        if len(execs) == 2 and sum(e["completedTasks"] for e in execs) < PARTITIONS - 4:
            return next((e["id"] for e in execs if e["activeTasks"]), None)
        return None

    executor = _wait(busy_executor, "both executors running tasks", 240, [driver.proc])
    driver.app_id_seen = driver.app_id()
    victim = cluster.worker_of(driver.app_id_seen, executor)
    survivor = next(n for n in cluster.procs if n.startswith("worker-") and n != victim)
    assert cluster.processes_in(victim)
    cluster.kill(victim)  # the worker JVM and its executor JVM; its Python workers die with their sockets
    log = _run_ok(driver, photo_set_batch, "run with a killed worker")
    _wait(lambda: not cluster.processes_in(victim), "the killed worker's processes gone", 15)
    TIMINGS["run with a worker SIGKILLed (driver start to exit), s"] = time.perf_counter() - t0
    assert "Lost executor" in log and "worker lost" in log, log[-4000:]
    # the killed worker's own log stops short (the worker JVM copied its executor's output), so the
    # survivor's tells: attempts 1+ of a task ("3.1") are the retries of the attempts lost with the worker
    retries = sorted(a for a in cluster.task_attempts(driver.app_id_seen)[survivor] if not a.endswith(".0"))
    TIMINGS["task attempts retried after the kill"] = len(retries)
    assert retries, cluster.task_attempts(driver.app_id_seen)
    _assert_equals_batch(s3_server, dest, src, photo_set, photo_set_batch)
