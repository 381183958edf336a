"""Running trainer processes in tests: bounded in time, killed if late."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

from tests.conftest import REPO_ROOT


def environment(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def driver_command(*args):
    return [sys.executable, "-m", "tests.trainer.driver", *args]


def start(command, log_path, **env):
    log = open(log_path, "w")
    return subprocess.Popen(command, cwd=REPO_ROOT, env=environment(**env),
                            stdout=log, stderr=subprocess.STDOUT)


def finish(process, log_path, timeout):
    """Waits up to `timeout` s; kills the process when late."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(
            f"process timed out after {timeout}s; log:\n{tail(log_path)}")
    if process.returncode != 0:
        raise AssertionError(
            f"process exited with {process.returncode}; log:\n"
            f"{tail(log_path)}")


def run(command, log_path, timeout, **env):
    finish(start(command, log_path, **env), log_path, timeout)


def tail(path, lines=60):
    with open(path) as f:
        return "".join(f.readlines()[-lines:])


def load_dump(prefix):
    weights = dict(np.load(prefix + ".npz"))
    with open(prefix + ".json") as f:
        return weights, json.load(f)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for(predicate, timeout, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
