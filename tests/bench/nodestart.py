"""How soon a node started by hand is ready: `blockfold node serve --data DIR --listen
127.0.0.1:0`, from the exec to its `ready HOST:PORT` line on stdout (what `cluster add` then
needs), REPEATS times, the median and the slowest counted.

Two starts are timed, each in its own fresh process:
  first start  an empty data dir (only authorized_keys): the node makes its host key and
               node.json before it listens, as in tests/cluster/test_membership.py
  restart      the same data dir again, its keys kept
and two floors, the part no node written in Python can avoid: `python -c pass` (the interpreter
alone, with the venv's site) and `python -c "import asyncssh"` (its SSH library).

Target: ready within 3.0 s of the exec, on the slowest first start (it was a timed assert in
test_membership.py, which failed when the machine was loaded; about 0.45 s on an idle machine).

    python -m tests.bench.nodestart [--data bench-data] [--repeats 7]
"""

from __future__ import annotations

import select
import signal
import statistics
import subprocess
import sys

from .common import blockfold_cli, parser, report, scratch, timer, verdict

TARGET = 3.0
READY_WAIT = 60.0       # seconds a start may take before the benchmark gives up


def ready_after(data) -> float:
    """Seconds from the exec of `blockfold node serve` on `data` to its ready line; the node is
    stopped (SIGTERM) after. Raises SystemExit when it does not say ready."""
    with timer() as t:
        node = subprocess.Popen([blockfold_cli(), "node", "serve", "--data", str(data),
                                 "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            ready, _, _ = select.select([node.stdout], [], [], READY_WAIT)
            line = node.stdout.readline() if ready else ""
        except BaseException:
            node.kill()
            node.wait()
            raise
    seconds = t()
    node.send_signal(signal.SIGTERM)
    try:
        _, err = node.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        node.kill()
        _, err = node.communicate()
    if not line.startswith("ready 127.0.0.1:"):
        raise SystemExit(f"blockfold node serve did not say ready: {line!r}\n{err}")
    return seconds


def started(command: list[str]) -> float:
    """Seconds `command` takes to run to its end."""
    with timer() as t:
        subprocess.run(command, check=True)
    return t()


def summary(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 4), "max_s": round(max(times), 4)}


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7, help="starts of each kind (default 7)")
    args = p.parse_args(argv)
    work = scratch(args.data, "nodestart")
    first, again = [], []
    for k in range(args.repeats):
        data = work / f"node{k}"
        data.mkdir()
        (data / "authorized_keys").write_text("")
        first.append(ready_after(data))
        again.append(ready_after(data))
    floors = {"python": [sys.executable, "-c", "pass"],
              "asyncssh": [sys.executable, "-c", "import asyncssh"]}
    floor = {name: summary([started(command) for _ in range(args.repeats)])
             for name, command in floors.items()}
    first_s, again_s = summary(first), summary(again)
    figures = {"repeats": args.repeats, "first_start": first_s, "restart": again_s,
               "floor_python": floor["python"], "floor_import_asyncssh": floor["asyncssh"],
               "target_s": TARGET,
               "verdict": verdict(first_s["max_s"], TARGET, higher_is_better=False)}
    ms = lambda s: f"{s * 1e3:.0f} ms"      # noqa: E731
    rows = [("start", "median", "slowest", "target", "verdict"),
            ("node serve, first start (keys made)", ms(first_s["median_s"]),
             ms(first_s["max_s"]), f"<= {TARGET:.1f} s", figures["verdict"]),
            ("node serve, restart (keys kept)", ms(again_s["median_s"]), ms(again_s["max_s"]),
             "", ""),
            ("floor: python -c pass", ms(floor["python"]["median_s"]),
             ms(floor["python"]["max_s"]), "", ""),
            ("floor: python -c 'import asyncssh'", ms(floor["asyncssh"]["median_s"]),
             ms(floor["asyncssh"]["max_s"]), "", "")]
    report("nodestart", f"`blockfold node serve` until ready, {args.repeats} starts of each kind",
           rows, figures)


if __name__ == "__main__":
    main()
