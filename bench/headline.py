"""The report's headline: each benchmark's main figure beside its peer's, against the issue's target.

Every figure is read from a benchmark's JSON by :func:`dig`; what is missing shows as the benchmark's
status ("not run", "failed", ...) or a dash, and a verdict is given only when the figure and the target
both exist.
"""

import statistics
from collections.abc import Callable
from dataclasses import dataclass

NONE = "\N{EN DASH}"  # what a table shows for a figure that does not exist


@dataclass
class Row:
    source: str
    label: str
    ours: str = NONE
    peer: str = NONE
    ratio: str = NONE
    target: str = NONE
    verdict: str = NONE
    #: Raw numbers for the bar plot: (Postroom, peer, unit), when both exist.
    bars: tuple[float, float, str] | None = None


def dig(data, *path):
    """``data[path[0]][path[1]]...``, or None as soon as a step is missing or of the wrong kind."""
    for key in path:
        if isinstance(data, dict):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def num(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return NONE
    if abs(value) >= 100 or float(value).is_integer():
        text = f"{value:,.0f}"
    else:
        text = f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{text}{unit}" if unit in ("x", "") else f"{text} {unit}"


def judge(value: float | None, ok: Callable[[float], bool]) -> str:
    return NONE if value is None else "met" if ok(value) else "missed"


def status(data: dict, name: str) -> str:
    """Why ``name`` has no figures: the last suite run's outcome, else "not run"."""
    for outcome in dig(data, "suite", "benchmarks") or []:
        if isinstance(outcome, dict) and outcome.get("name") == name and outcome.get("status") != "ok":
            return str(outcome.get("status"))
    return "not run"


def compare(source: str, label: str, ours: float | None, peer: float | None, unit: str, target: str = NONE,
            ok: Callable[[float], bool] | None = None, on: str = "ours", higher_is_better: bool = True) -> Row:
    """A row with both figures, the ratio Postroom / peer (or peer / Postroom when lower is better)."""
    ratio = None
    if ours and peer:
        ratio = ours / peer if higher_is_better else peer / ours
    judged = ours if on == "ours" else ratio
    return Row(source, label, fmt(ours, unit), fmt(peer, unit), fmt(ratio, "x"), target,
               judge(judged, ok) if ok else NONE, (ours, peer, unit) if ours is not None and peer is not None else None)


def intake(d: dict) -> list[Row]:
    runs = [r for r in dig(d, "runs") or [] if isinstance(r, dict) and num(r.get("rate"))]
    if not runs:
        return []
    best, peer = max(runs, key=lambda r: r.get("batch") or 0), runs[0]
    return [compare("intake", f"accepted 10 KB docs/s, max_batch {best.get('batch')} (peer: max_batch "
                    f"{peer.get('batch')})", num(best["rate"]), num(peer["rate"]), "docs/s", "≥ 1,000/s",
                    lambda v: v >= 1000)]


def as2(d: dict) -> list[Row]:
    rows = [compare("as2", "CPU per message, read + signed MDN (peer: pyas2lib)", num(dig(d, "postroom", "median_ms")),
                    num(dig(d, "pyas2lib", "median_ms")), "ms", higher_is_better=False)]
    mb, rss = num(dig(d, "daemon_large", "payload_mb")), num(dig(d, "daemon_large", "daemon_peak_rss_mb"))
    if rss is not None:
        full = mb is not None and mb >= 100
        rows.append(Row("as2", f"daemon peak RSS, one {fmt(mb)} MB message", fmt(rss, "MB"),
                        target="≤ 150 MB at 100 MB",
                        verdict=judge(rss, lambda v: v <= 150) if full else "not judged: not a 100 MB run"))
    return rows


def load_points(d: dict, server: str) -> dict[int, list[dict]]:
    """as2_load's valid ``runs`` of one server (``postroom`` or ``django-pyas2``), by concurrency."""
    found: dict[int, list[dict]] = {}
    for run in dig(d, "runs") or []:
        if (isinstance(run, dict) and run.get("server") == server and run.get("valid") is not False
                and isinstance(run.get("concurrency"), int)):
            found.setdefault(run["concurrency"], []).append(run)
    return found


def median_of(points: list[dict], key: str) -> float | None:
    values = [v for v in (num(p.get(key)) for p in points) if v is not None]
    return statistics.median(values) if values else None


def setups(d: dict) -> list[str]:
    """The Postroom set-ups as2_load measured: ``postroom`` (one daemon) first, then ``postroom-<N>x`` (nodes)."""
    names = {r.get("server") for r in dig(d, "runs") or [] if isinstance(r, dict)}
    ours = (n for n in names if isinstance(n, str) and n.startswith("postroom"))
    return sorted(ours, key=lambda n: (n != "postroom", n))


def setup_label(name: str) -> str:
    return "one daemon, SQLite" if name == "postroom" else f"{name.split('-')[-1].rstrip('x')} daemons, PostgreSQL"


def as2_load(d: dict) -> list[Row]:
    peer = load_points(d, PEER).get(32, [])
    peer_rate = median_of(peer, "msgs_per_s")
    name = " ".join(filter(None, (PEER, dig(d, "versions", PEER, PEER))))
    rows = []
    for setup in setups(d) or ["postroom"]:
        ours = load_points(d, setup).get(32, [])
        label = setup_label(setup)
        if not ours:
            levels = sorted(load_points(d, setup))
            rows.append(Row("as2_load", f"{label}: concurrency 32 (this run: "
                            f"{', '.join(map(str, levels)) or 'no valid run'})", "not measured",
                            target="≥ 500/s, ≥ 9x, p99 ≤ 100 ms"))
            continue
        rate = median_of(ours, "msgs_per_s")
        rows += [compare("as2_load", f"{label}: msgs/s at concurrency 32 (peer: {name})", rate, peer_rate, "msgs/s",
                         "≥ 500/s", lambda v: v >= 500),
                 compare("as2_load", f"{label}: ratio to {name} at concurrency 32", rate, peer_rate, "msgs/s",
                         "≥ 9x", lambda v: v >= 9, on="ratio"),
                 compare("as2_load", f"{label}: p99 latency at concurrency 32", median_of(ours, "p99_ms"),
                         median_of(peer, "p99_ms"), "ms", "≤ 100 ms", lambda v: v <= 100, higher_is_better=False)]
    return rows


def latency(d: dict) -> list[Row]:
    """One row per offered rate: the time from sending a message to seeing it in the recipient's mailbox."""
    runs = [r for r in dig(d, "runs") or [] if isinstance(r, dict)]
    return [Row("latency", f"end-to-end p99 at {fmt(num(r.get('rate')))} msgs/s offered via {r.get('door', '?')} "
                f"({r.get('visible', '?')}/{r.get('sent', '?')} seen)", fmt(num(dig(r, "latency_ms", "p99")), "ms"),
                target="≤ 250 ms", verdict=judge(num(dig(r, "latency_ms", "p99")), lambda v: v <= 250))
            for r in runs]


def sftp(d: dict) -> list[Row]:
    big, small = dig(d, "big", "sftp"), dig(d, "small", "sftp")
    mb = dig(d, "parameters", "big_mb")
    rows = [compare("sftp", f"{mb} MB upload, sftp client (peer: OpenSSH put)", num(dig(big, "postroom", "median")),
                    num(dig(big, "openssh", "median")), "MB/s", "≥ 1.0x at 200 MB",
                    (lambda v: v >= 1.0) if mb == 200 else None, on="ratio"),
            compare("sftp", f"{dig(d, 'parameters', 'files')} signed 10 KB invoices, sftp client (peer: OpenSSH put)",
                    num(dig(small, "postroom", "median")), num(dig(small, "openssh", "median")), "files/s", "≥ 0.5x",
                    lambda v: v >= 0.5, on="ratio")]
    growth = num(dig(d, "gigabyte", "rss_growth_mb"))
    rows.append(Row("sftp", "1 GB upload, daemon RSS growth", fmt(growth, "MB") if growth is not None else "not run",
                    target="≤ 50 MB", verdict=judge(growth, lambda v: v <= 50)))
    return rows


def smtp(d: dict) -> list[Row]:
    return [compare("smtp", f"signed mails/s over {dig(d, 'parameters', 'connections')} connections (peer: aiosmtpd "
                    "+ fsync)", num(dig(d, "medians", "postroom", "msgs_per_s")),
                    num(dig(d, "medians", "aiosmtpd", "msgs_per_s")), "mails/s", "report")]


def store(d: dict) -> list[Row]:
    """Each listing's p50 at the largest mailbox beside the smallest: flat means a ratio near 1."""
    sizes = sorted((s for s in dig(d, "sizes") or [] if isinstance(s, dict) and num(s.get("size"))),
                   key=lambda s: s["size"])
    if not sizes:
        return []
    low, high = sizes[0], sizes[-1]
    rows = []
    for kind in LISTINGS:
        big, small = num(dig(high, "latency_ms", kind, "p50")), num(dig(low, "latency_ms", kind, "p50"))
        if big is not None:
            rows.append(Row("store", f"listing '{kind}' p50 at {high['size']:,} messages (peer: at {low['size']:,})",
                            fmt(big, "ms"), fmt(small, "ms"), fmt(big / small if small else None, "x"), "flat"))
    return rows


PEER = "django-pyas2"
#: store.json's request kinds that list a mailbox (``item`` and ``content`` fetch one message).
LISTINGS = ("first", "deep", "cursor", "new")
EXTRACT = {"intake": intake, "as2": as2, "as2_load": as2_load, "latency": latency, "sftp": sftp, "smtp": smtp,
           "store": store}
#: What each benchmark's rows say when it has no JSON: (measure, target).
EXPECTED = {"intake": [("accepted 10 KB docs/s", "≥ 1,000/s")],
            "as2": [("CPU per message vs pyas2lib", NONE), ("daemon peak RSS, 100 MB message", "≤ 150 MB")],
            "as2_load": [("msgs/s at concurrency 32", "≥ 500/s"), ("ratio to django-pyas2", "≥ 9x"),
                         ("p99 latency at concurrency 32", "≤ 100 ms")],
            "latency": [("end-to-end p99", "≤ 250 ms")],
            "sftp": [("200 MB upload vs OpenSSH", "≥ 1.0x"), ("small files vs OpenSSH", "≥ 0.5x"),
                     ("1 GB upload, RSS growth", "≤ 50 MB")],
            "smtp": [("signed mails/s vs aiosmtpd", "report")],
            "store": [("listing latency by mailbox size", "flat")]}


def headline(data: dict[str, dict]) -> list[Row]:
    rows = []
    for name, extract in EXTRACT.items():
        found = data.get(name)
        try:
            got = extract(found) if isinstance(found, dict) and "_error" not in found else []
        except Exception as error:  # a JSON of an unexpected shape costs its rows, not the report
            got = [Row(name, f"{name}.json could not be read: {error!r}")]
        if isinstance(found, dict) and "_error" in found:
            got = [Row(name, found["_error"], "unreadable")]
        rows += got or [Row(name, label, status(data, name), target=target) for label, target in EXPECTED[name]]
    return rows
