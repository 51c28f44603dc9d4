"""Each benchmark's own table for its report section, from the fields its JSON is known to hold.

A table the JSON cannot fill is left out (the section still shows the headline rows and the machine); a
missing single figure is a dash.
"""

from bench.headline import NONE, dig, fmt, num


def cell(value) -> str:
    if value is None:
        return NONE
    if isinstance(value, float):
        return fmt(value)
    return str(value).replace("|", "\\|")


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def ms(seconds) -> float | None:
    value = num(seconds)
    return None if value is None else value * 1000


def intake(d: dict) -> list[str]:
    runs = [r for r in dig(d, "runs") or [] if isinstance(r, dict)]
    if not runs:
        return []
    first = num(runs[0].get("rate"))
    return table(["max_batch", "msgs/s", f"vs batch {runs[0].get('batch')}", "disk fsyncs/s", "mean batch", "p50 ms",
                  "p99 ms", "CPU ms/msg"],
                 [[r.get("batch"), num(r.get("rate")), num(r.get("rate")) / first if first and num(r.get("rate"))
                   else None, num(r.get("disk")), num(r.get("formed")), ms(r.get("p50")), ms(r.get("p99")),
                   ms(r.get("cpu"))] for r in runs])


def as2(d: dict) -> list[str]:
    rows = [[side, num(dig(d, side, "median_ms")), ", ".join(fmt(num(v)) for v in dig(d, side, "rounds_ms") or [])]
            for side in ("postroom", "pyas2lib") if isinstance(d.get(side), dict)]
    lines = table(["side", "CPU ms per message (median)", "rounds"], rows) if rows else []
    for key in ("large", "daemon_large"):
        if isinstance(d.get(key), dict):
            lines += ["", f"`{key}`: " + ", ".join(f"{k} {cell(v)}" for k, v in d[key].items())]
    return lines


def as2_load(d: dict) -> list[str]:
    runs = [r for r in dig(d, "runs") or [] if isinstance(r, dict)]
    keys = ("msgs_per_s", "p50_ms", "p95_ms", "p99_ms", "server_cpu_ms_per_msg", "server_peak_rss_mb")
    rows = [[r.get("server"), r.get("concurrency"), r.get("round"), *(num(r.get(k)) for k in keys),
             "yes" if r.get("valid") else f"INVALID ({r.get('failures')} failed)"]
            for r in sorted(runs, key=lambda r: (r.get("concurrency") or 0, str(r.get("server")), r.get("round") or 0))]
    lines = table(["server", "concurrency", "round", *keys, "valid"], rows) if rows else []
    for side, versions in (dig(d, "versions") or {}).items():
        if isinstance(versions, dict) and versions:
            lines += ["", f"{side} side: " + ", ".join(f"{k} {cell(v)}" for k, v in versions.items()) + "."]
    return lines


def latency(d: dict) -> list[str]:
    rows = []
    for r in (r for r in dig(d, "runs") or [] if isinstance(r, dict)):
        for step in ("latency_ms", "door_answer_ms", "accepted_to_visible_ms", "send_lag_ms"):
            if isinstance(r.get(step), dict):
                rows.append([num(r.get("rate")), num(r.get("achieved_rate")), f"{r.get('visible')}/{r.get('sent')}",
                             r.get("failures"), step, *(num(r[step].get(k)) for k in ("p50", "p95", "p99", "max"))])
    return table(["offered msgs/s", "achieved", "seen/sent", "failures", "step", "p50", "p95", "p99", "max"],
                 rows) if rows else []


def sftp(d: dict) -> list[str]:
    rows = []
    for test, unit in (("big", "MB/s"), ("small", "files/s")):
        for client, by in (dig(d, test) or {}).items():
            if isinstance(by, dict):
                rows.append([f"{test}, {unit}", client, num(dig(by, "postroom", "median")),
                             num(dig(by, "openssh", "median")), num(dig(by, "openssh-f", "median")),
                             num(by.get("ratio_vs_openssh")), num(by.get("ratio_vs_openssh-f")),
                             " / ".join(fmt(num(v)) for v in dig(by, "postroom", "values") or [])])
    lines = table(["test", "client", "Postroom", "OpenSSH", "OpenSSH put -f", "ratio", "ratio to put -f",
                   "Postroom rounds"], rows) if rows else []
    giga = d.get("gigabyte")
    if isinstance(giga, dict):
        lines += ["", f"1 GB paramiko upload: {cell(num(giga.get('mb_per_s')))} MB/s; daemon RSS "
                  f"{cell(num(giga.get('rss_before_mb')))} MB before, peak {cell(num(giga.get('rss_peak_mb')))} MB, "
                  f"growth {cell(num(giga.get('rss_growth_mb')))} MB ({cell(giga.get('samples'))} samples)."]
    else:
        lines += ["", "1 GB run: not run (`--quick` or `--no-gigabyte`)."]
    return lines


def smtp(d: dict) -> list[str]:
    keys = ("msgs_per_s", "p50_ms", "p95_ms", "p99_ms", "server_cpu_ms_per_mail", "peak_rss_mb")
    sides = [s for s in ("postroom", "aiosmtpd", "ratio") if isinstance(dig(d, "medians", s), dict)]
    lines = table(["", *keys], [[s, *(num(dig(d, "medians", s, k)) for k in keys)] for s in sides]) if sides else []
    runs = [r for r in dig(d, "runs") or [] if isinstance(r, dict)]
    for server in ("postroom", "aiosmtpd"):
        rates = [fmt(num(r.get("msgs_per_s"))) for r in runs if r.get("server") == server]
        if rates:
            lines += ["", f"{server} rounds, msgs/s: {', '.join(rates)}."]
    return lines


def store(d: dict) -> list[str]:
    rows = []
    for size in (s for s in dig(d, "sizes") or [] if isinstance(s, dict)):
        for kind, figures in (size.get("latency_ms") or {}).items():
            if isinstance(figures, dict):
                rows.append([size.get("size"), kind, *(num(figures.get(k)) for k in ("p50", "p95", "p99", "max"))])
    return table(["messages", "request", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows) if rows else []


DETAIL = {"intake": intake, "as2": as2, "as2_load": as2_load, "latency": latency, "sftp": sftp, "smtp": smtp,
          "store": store}
