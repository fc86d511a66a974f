"""Two `Server`s in one process share the process's signal handler: one SIGTERM stops both, and the process exits.

Before, the second server saved the first one's handler as "previous" and called it back, which called the second
again (RecursionError, and the first server's keeper kept the process alive); a stopped server could also keep
the handler, so later signals did nothing.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import communicate_or_fail, free_port

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from rustserve.server import Server, ServableStartConfig

    directory, addresses = sys.argv[1], sys.argv[2:]
    first, second = Server(), Server()
    for server, (grpc, rest) in ((first, addresses[:2]), (second, addresses[2:])):
        server.start_servables(ServableStartConfig(directory, "add"))
        server.start_grpc_server(grpc)
        server.start_restful_server(rest)
    print("BOTH READY", flush=True)
    time.sleep(120)
    """
)


def run(tmp_path: Path) -> subprocess.Popen[str]:
    script = tmp_path / "two_servers.py"
    script.write_text(SCRIPT)
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(4)]
    command = [sys.executable, str(script), str(ROOT / "examples" / "servables"), *addresses]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("BOTH READY"):
            return proc
    out, err = communicate_or_fail(proc, 30, "the two-server script")
    raise AssertionError(f"the script did not get both servers up: {proc.returncode}\n{out}\n{err}")


def test_one_sigterm_stops_two_servers_and_the_process(tmp_path: Path) -> None:
    proc = run(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = communicate_or_fail(proc, 30, "the two-server script after SIGTERM")
    # The main thread gets SIGTERM's usual effect (SystemExit(128 + 15)); both keepers stop their servers.
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err)
    assert "RecursionError" not in err, err
    assert err.count("receive exit signal SIGTERM") == 2, err
