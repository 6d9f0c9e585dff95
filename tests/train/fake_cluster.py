"""Stand-in `ssh` and `pdsh` for DeepSpeed's pdsh runner on one machine: every "node" of a host file is this machine.

What DeepSpeed 0.19 calls (deepspeed/launcher/runner.py main, multinode_runner.py PDSHRunner.get_cmd):
- `ssh -o PasswordAuthentication=no HOST hostname`: is the first host reachable (exit 0);
- `ssh HOST hostname -I`: the master address (its first word): 127.0.0.1 here;
- `pdsh -S -f N -w host1,host2 WORDS...`: pdsh joins WORDS into one command line, runs it on every host over ssh
  with `%n` replaced by the host's index in the list, in parallel, prefixes each output line with "HOST: ", and
  with -S exits with the largest of the hosts' exit codes.

Each node's command runs as after a fresh ssh login: only PATH (a login's default) and HOME are set, so what the run
needs must travel in the command (DeepSpeed's exports, among them the `.deepspeed_env` file's). HOME is this user's,
as on a cluster whose nodes share home folders: DeepSpeed's CPU communication op, compiled on first use into
~/.cache/torch_extensions (minutes on two cores), is then compiled once, not once per node and test. The environment each node's command sees before it starts DeepSpeed's launcher is
written to DIR/env-HOST.txt, pdsh's argument list to DIR/pdsh.json, ssh's calls to DIR/ssh.log (DIR: FAKE_CLUSTER_DIR).

`write_stand_ins(folder)` writes the two executables; a test puts `folder` first on PATH.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

LOGIN_PATH = "/usr/local/bin:/usr/bin:/bin"  # what a non-interactive ssh login gets (OpenSSH's default PATH)
MASTER_ADDR = "127.0.0.1"


def write_stand_ins(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("ssh", "pdsh"):
        exe = bin_dir / name
        exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" {name} "$@"\n')
        exe.chmod(0o755)


def _record_dir() -> Path:
    return Path(os.environ["FAKE_CLUSTER_DIR"])


def ssh(args: list[str]) -> int:
    words = list(args)
    while words and words[0] in ("-o", "-p"):
        del words[:2]
    host, command = words[0], words[1:]
    with (_record_dir() / "ssh.log").open("a") as f:
        f.write(" ".join(args) + "\n")
    if command == ["hostname"]:
        print(host)
    elif command == ["hostname", "-I"]:
        print(f"{MASTER_ADDR} ")
    else:
        print(f"stand-in ssh runs only `hostname [-I]`, not {command}", file=sys.stderr)
        return 255
    return 0


def _parse_pdsh(args: list[str]) -> tuple[list[str], list[str]]:
    words, hosts = list(args), None
    while words and words[0].startswith("-"):
        flag = words.pop(0)
        if flag in ("-f", "-w"):
            value = words.pop(0)
            hosts = value.split(",") if flag == "-w" else hosts
        elif flag != "-S":
            raise SystemExit(f"stand-in pdsh: unknown flag {flag}")
    if not hosts or not words:
        raise SystemExit("stand-in pdsh: needs -w HOSTS and a command")
    return hosts, words


def _node_command(words: list[str], host: str, index: int) -> str:
    """The command line one node runs; before DeepSpeed's `cd FOLDER;` it writes the node's environment down."""
    at = next(i for i, w in enumerate(words) if w.startswith("cd "))
    record = f"env > {_record_dir() / f'env-{host}.txt'};"
    return " ".join([*words[:at], record, *words[at:]]).replace("%n", str(index))


def _pump(proc: subprocess.Popen, host: str, lock: threading.Lock) -> None:
    for raw in iter(proc.stdout.readline, b""):
        with lock:
            sys.stdout.write(f"{host}: {raw.decode(errors='replace')}")
            sys.stdout.flush()


def pdsh(args: list[str]) -> int:
    hosts, words = _parse_pdsh(args)
    (_record_dir() / "pdsh.json").write_text(json.dumps({"argv": args, "hosts": hosts}))
    procs, pumps, lock = [], [], threading.Lock()
    for index, host in enumerate(hosts):
        p = subprocess.Popen(
            ["/bin/sh", "-c", _node_command(words, host, index)],
            env={"PATH": LOGIN_PATH, "HOME": os.environ["HOME"]},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # as a remote process: the local terminal's signals do not reach it
        )
        procs.append(p)
        pumps.append(threading.Thread(target=_pump, args=(p, host, lock), daemon=True))
        pumps[-1].start()

    def stop(signum, frame):  # DeepSpeed's runner stops pdsh with SIGINT, then SIGTERM; ssh would drop the nodes
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    codes = [p.wait() for p in procs]
    for t in pumps:
        t.join(timeout=5)
    return max(c if c >= 0 else 128 - c for c in codes)  # ssh reports a signal as 128 + its number


if __name__ == "__main__":
    tool, rest = sys.argv[1], sys.argv[2:]
    sys.exit(ssh(rest) if tool == "ssh" else pdsh(rest))
