"""The report's PNGs (matplotlib, Agg backend: no display needed), each drawn only from figures a JSON holds.

Raw series are found by field name anywhere in a benchmark's JSON, so a benchmark opts in by storing them:
``latencies_ms`` (a list of per-message latencies; latency.json's ``runs[].raw.latency_ms`` too) feeds the
latency CDF, ``rss_samples`` (a list of
``[seconds, MB]`` pairs) the RSS-over-time plot; as2_load's ``runs`` give the throughput curve and
store's ``sizes`` the listing latency by mailbox size. A plot with nothing to draw is replaced in the report
by a sentence saying why.
"""

import textwrap
from pathlib import Path

from bench.headline import LISTINGS, PEER, Row, dig, fmt, load_points, median_of, num, setup_label, setups

CONTEXT = ("server", "client", "concurrency", "test")


def log_x(ax, ticks=None) -> None:
    """A log x axis labelled in plain numbers: 1, 2, 5, 10, 20... or exactly ``ticks``."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    if ticks:
        ax.set_xticks(ticks)
    else:
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def walk(node, path: tuple = ()):
    """Every dict inside ``node`` with the path to it."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, (*path, i))


def label(bench: str, path: tuple, node: dict) -> str:
    """The dict's own ``series_label``, else ``bench`` plus what the dict says it is (server, client,
    concurrency), else its path without indices."""
    if isinstance(node.get("series_label"), str):
        return node["series_label"]
    context = [f"{k}={node[k]}" if k == "concurrency" else str(node[k]) for k in CONTEXT if k in node]
    return " ".join([bench, *(context or [str(p) for p in path if not isinstance(p, int)])])


def series(data: dict[str, dict], field: str) -> dict[str, list]:
    """Every list stored under ``field`` in any benchmark's JSON, merged by label (rounds pool together)."""
    found: dict[str, list] = {}
    for bench, content in data.items():
        for path, node in walk(content):
            if isinstance(node.get(field), list) and node[field] and node.get("valid") is not False:
                found.setdefault(label(bench, path, node), []).extend(node[field])
    return found


def throughput(ax, data: dict[str, dict]) -> str | None:
    d = data.get("as2_load")
    if not isinstance(d, dict):
        return "as2_load has not run."
    drawn, ticks = False, set()
    for server, name in [(s, f"Postroom ({setup_label(s)})") for s in setups(d)] + [(PEER, PEER)]:
        levels = {c: median_of(runs, "msgs_per_s") for c, runs in sorted(load_points(d, server).items())}
        levels = {c: v for c, v in levels.items() if v is not None}
        if levels:
            ax.plot(list(levels), list(levels.values()), marker="o", label=name)
            drawn, ticks = True, ticks | set(levels)
    if not drawn:
        return "as2_load.json has no valid `runs` with `server`, `concurrency` and `msgs_per_s`."
    ax.axhline(500, color="grey", linestyle="--", linewidth=1, label="target 500/s at 32")
    log_x(ax, sorted(ticks))
    ax.set(xlabel="concurrent senders", ylabel="messages/s", title="AS2 throughput vs concurrency", ylim=(0, None))
    return None


def listing(ax, data: dict[str, dict]) -> str | None:
    sizes = sorted((s for s in dig(data, "store", "sizes") or [] if isinstance(s, dict) and num(s.get("size"))),
                   key=lambda s: s["size"])
    if not sizes:
        return "store has not run."
    for kind in LISTINGS:
        points = [(s["size"], num(dig(s, "latency_ms", kind, "p50"))) for s in sizes]
        points = [p for p in points if p[1] is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{kind} p50")
    log_x(ax, [s["size"] for s in sizes])
    ax.set(xlabel="messages in the store", ylabel="ms", title="Mailbox listing latency by store size",
           ylim=(0, None))
    return None


def end_to_end(data: dict[str, dict]) -> dict[str, list]:
    """latency.json's raw send-to-mailbox latencies, one series per offered rate."""
    return {f"latency e2e {fmt(num(r.get('rate')))}/s via {r.get('door')}": dig(r, "raw", "latency_ms")
            for r in dig(data, "latency", "runs") or [] if isinstance(dig(r, "raw", "latency_ms"), list)}


def latency_cdf(ax, data: dict[str, dict]) -> str | None:
    raw = {**series(data, "latencies_ms"), **end_to_end(data)}
    found = {k: sorted(v for v in vs if num(v) is not None) for k, vs in raw.items()}
    found = {k: v for k, v in found.items() if v}
    if not found:
        return "no JSON holds raw latencies (`latencies_ms`; smtp.json keeps only p50/p95/p99/max per round)."
    for name, values in sorted(found.items()):
        ax.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post",
                label=f"{name} (n={len(values)})")
    log_x(ax)
    ax.set(xlabel="latency, ms", ylabel="fraction of messages", title="Latency CDF (per message)",
           ylim=(0, 1.01))
    return None


def rss(ax, data: dict[str, dict]) -> str | None:
    found = {k: [p for p in v if isinstance(p, list | tuple) and len(p) == 2 and num(p[0]) is not None
                 and num(p[1]) is not None] for k, v in series(data, "rss_samples").items()}
    found = {k: v for k, v in found.items() if v}
    if not found:
        count = dig(data, "sftp", "gigabyte", "samples")
        where = (f"sftp.json's 1 GB run took {count} samples but stores only their before/peak/growth"
                 if count else "the sftp 1 GB run has not run")
        return f"no JSON holds an RSS series (`rss_samples`): {where}."
    for name, points in sorted(found.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], label=name)
    ax.set(xlabel="seconds", ylabel="RSS, MB", title="RSS over time", ylim=(0, None))
    return None


def bars(figure_factory, rows: list[Row]):
    """One small panel per headline row with both figures: Postroom beside its peer, in the row's unit."""
    rows = [r for r in rows if r.bars]
    if not rows:
        return None, "no headline row has both a Postroom and a peer figure."
    columns = min(3, len(rows))
    fig, axes = figure_factory((4.2 * columns, 3.4 * ((len(rows) + columns - 1) // columns)), len(rows), columns)
    for ax, row in zip(axes, rows, strict=False):
        ours, peer, unit = row.bars
        ax.bar(["Postroom", "peer"], [ours, peer], color=["tab:blue", "tab:grey"])
        ax.set_title(textwrap.fill(f"{row.source}: {row.label}", 40), fontsize=8)
        ax.set_ylabel(unit)
    for ax in axes[len(rows):]:
        ax.set_visible(False)
    return fig, None


def draw(folder: Path, data: dict[str, dict], rows: list[Row]) -> list[str]:
    """Write the PNGs into ``folder``; the report's lines for them (an image, or why there is none)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["Plots skipped: matplotlib is not installed (`.venv/bin/pip install -e '.[bench]'`)."]

    def grid(size, count, columns):
        fig, axes = plt.subplots((count + columns - 1) // columns, columns, figsize=size, squeeze=False)
        return fig, list(axes.flat)

    lines = []
    for name, title, plot in (("throughput", "Throughput vs concurrency", throughput),
                              ("latency_cdf", "Latency CDF", latency_cdf), ("rss", "RSS over time", rss),
                              ("listing", "Store listing latency", listing)):
        fig, ax = plt.subplots(figsize=(9, 4.2))
        try:
            why = plot(ax, data)
        except Exception as error:  # a JSON of an unexpected shape costs its plot, not the report
            why = f"the data could not be read: {error!r}"
        lines += _save(fig, folder / f"{name}.png", title, why, ax)
        plt.close(fig)
    fig, why = bars(grid, rows)
    lines += _save(fig, folder / "bars.png", "Postroom vs peer", why)
    if fig is not None:
        plt.close(fig)
    return lines


def _save(fig, path: Path, title: str, why: str | None, ax=None) -> list[str]:
    if why:
        path.unlink(missing_ok=True)  # never leave an earlier run's picture beside a report that says "none"
        return [f"**{title}**: not drawn, {why}", ""]
    if ax is not None:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the plot, never over a curve
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return [f"**{title}**", "", f"![{title}]({path.name})", ""]
