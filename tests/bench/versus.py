"""The side-by-side table of RESULTS.md: every scenario's figures for Spinwire and Centrifugo
(median and range over the repetitions), the ratio of the medians and the issue's target.

A ratio is always Spinwire's median divided by Centrifugo's, whatever the figure: a cost (CPU,
memory, latency, time) is met at or below its target, a rate at or above it."""

import statistics

SPINWIRE, CENTRIFUGO = "spinwire", "centrifugo"


def fmt(value, digits):
    return "–" if value is None else f"{value:,.{digits}f}"


class Figure:
    """One row of the table: a figure of both servers over their repetitions."""

    def __init__(self, scenario, what, unit, digits, target, values):
        self.scenario, self.what, self.unit, self.digits = scenario, what, unit, digits
        # target: ("<=", 0.5) for costs, (">=", 1.0) for rates, None for context only.
        self.target = target
        self.values = {server: [v for v in vs if v is not None] for server, vs in values.items()}

    def cell(self, server):
        values = sorted(self.values.get(server) or [])
        if not values:
            return "–"
        median = statistics.median(values)
        if len(values) == 1:
            return fmt(median, self.digits)
        return f"{fmt(median, self.digits)} ({fmt(values[0], self.digits)}–{fmt(values[-1], self.digits)})"

    def ratio(self):
        ours, theirs = self.values.get(SPINWIRE), self.values.get(CENTRIFUGO)
        if not ours or not theirs or statistics.median(theirs) == 0:
            return None
        return statistics.median(ours) / statistics.median(theirs)

    def verdict(self):
        ratio = self.ratio()
        if ratio is None or self.target is None:
            return "–"
        op, bound = self.target
        met = ratio <= bound if op == "<=" else ratio >= bound
        return "met" if met else "**missed**"

    def line(self):
        ratio = self.ratio()
        target = "–" if self.target is None else f"{'≤' if self.target[0] == '<=' else '≥'} {self.target[1]:g}"
        runs = max((len(v) for v in self.values.values()), default=0)
        return (f"| {self.scenario} | {self.what} ({self.unit}) | {self.cell(SPINWIRE)} | {self.cell(CENTRIFUGO)} | "
                f"{fmt(ratio, 2)} | {target} | {self.verdict()} | {runs} |")


COST, RATE = ("<=", 0.5), (">=", 1.0)


def by_server(rows, value):
    """{server: [value(row) for each repetition]}."""
    out = {}
    for row in rows:
        out.setdefault(row.get("server", SPINWIRE), []).append(value(row))
    return out


def groups(rows, scenario, key):
    """Rows of one scenario grouped by `key(row)` (servers together), in first-seen order."""
    out = {}
    for row in rows:
        if row.get("scenario") == scenario:
            out.setdefault(key(row), []).append(row)
    return out


def unsaturated(step):
    """The server used under 80 % of its core: above that a work-conserving server's CPU per
    delivery is about 1/rate whatever its efficiency, so it compares nothing."""
    cpu = step.get("server_cpu_s_per_1m")
    return cpu is not None and step["target_deliveries_per_s"] * cpu / 1e6 < 0.8


def common_step(rows):
    """The highest offered rate at which every search run of every server was clean, kept up
    and left headroom on its core: costs and tails compare there, at equal load."""
    rates = None
    for row in rows:
        good = {s["target_deliveries_per_s"] for s in row.get("steps", [])
                if s.get("clean") and s.get("kept_up", s.get("ok")) and unsaturated(s)}
        rates = good if rates is None else rates & good
    return max(rates) if rates else None


def step_at(row, rate):
    return next((s for s in row.get("steps", []) if s["target_deliveries_per_s"] == rate), {})


def search_figures(rows):
    figures = []
    keyed = {}
    for r in rows:
        if r.get("scenario") in ("fanout", "many") and "steps" in r and r.get("server") in (SPINWIRE, CENTRIFUGO):
            keyed.setdefault((r["scenario"], r["subs"], r["protocol"], r.get("transport", "websocket")), []).append(r)
    for (scenario, subs, protocol, transport), group in keyed.items():
        name = f"{'fan-out, one channel' if scenario == 'fanout' else 'many channels'}, {subs:,} subs, {protocol}"
        if transport == "grpc":
            name += " over gRPC stream"
        figures.append(Figure(name, "max deliveries/s with p99 < 50 ms", "/s", 0, RATE,
                              by_server(group, lambda r: (r.get("max") or {}).get("deliveries_per_s"))))
        figures.append(Figure(name, "max clean deliveries/s", "/s", 0, None,
                              by_server(group, lambda r: (r.get("max_clean") or {}).get("deliveries_per_s"))))
        rate = common_step(group) if len({r.get("server") for r in group}) > 1 else None
        if rate:
            at = f"at {rate:,.0f}/s"
            figures.append(Figure(name, f"server CPU per delivery {at}", "µs", 2, COST,
                                  by_server(group, lambda r: step_at(r, rate).get("server_cpu_s_per_1m"))))
            figures.append(Figure(name, f"p99 {at}", "ms", 2, COST,
                                  by_server(group, lambda r: step_at(r, rate).get("p99_ms"))))
    return figures


def fixed_figures(rows):
    figures = []
    keyed = {}
    for r in rows:
        if r.get("scenario") in ("fanout", "many") and "result" in r and r.get("server") in (SPINWIRE, CENTRIFUGO):
            keyed.setdefault((r["scenario"], r["subs"], r["result"]["target_deliveries_per_s"]), []).append(r)
    for (scenario, subs, rate), group in sorted(keyed.items(), key=lambda kv: (kv[0][0] != "many", kv[0][2])):
        name = (f"{'one channel' if scenario == 'fanout' else 'many channels'}, {subs:,} subs, "
                f"fixed {rate:,.0f} deliveries/s")
        # A run that delivered nothing in its window (a server far behind the offered load) has
        # no latency or CPU per delivery; the delivered rate row says so.
        carried = lambda r: r["result"].get("deliveries_per_s", 0) > 0
        if not all(carried(r) for r in group):
            figures.append(Figure(name, "delivered per second in the window", "/s", 0, None,
                                  by_server(group, lambda r: r["result"].get("deliveries_per_s"))))
        for key, what, unit, digits in (("server_cpu_s_per_1m", "server CPU per delivery", "µs", 2),
                                        ("p99_ms", "p99", "ms", 2), ("p999_ms", "p99.9", "ms", 2)):
            figures.append(Figure(name, what, unit, digits, COST,
                                  by_server(group, lambda r, k=key: r["result"].get(k) if carried(r) else None)))
    return figures


def simple_figures(rows):
    figures = []
    for (conns, channels), group in groups(rows, "idle", lambda r: (r["conns"], r["subscriptions_each"])).items():
        figures.append(Figure(f"idle, {conns:,} connections × {channels} subscriptions", "server RSS per connection",
                              "KB", 2, ("<=", 0.15), by_server(group, lambda r: r["server_rss_bytes_per_conn"] / 1024)))
    for transport, group in groups(rows, "connect", lambda r: r.get("transport", "websocket")).items():
        conns = group[0]["conns"]
        figures.append(Figure(f"connect {conns:,} clients ({transport})", "time to all subscribed", "s", 2, COST,
                              by_server(group, lambda r: r["seconds"])))
    for transport, group in groups(rows, "api", lambda r: r.get("transport", "http")).items():
        name = f"server API publish over {'HTTP' if transport == 'http' else 'gRPC'}, no subscribers"
        figures.append(Figure(name, "server CPU per publish", "µs", 1, COST,
                              by_server(group, lambda r: r.get("server_cpu_us_per_publish"))))
        figures.append(Figure(name, "publishes per second", "/s", 0, None,
                              by_server(group, lambda r: r.get("publishes_per_s"))))
    return figures


def cluster_figures(rows):
    figures = []
    for rate, group in groups(rows, "cross-node", lambda r: r["result"]["target_deliveries_per_s"]).items():
        subs = group[0]["subs"]
        name = f"two nodes on Redis, {rate / subs:,.0f} publications/s × {subs} subs"
        figures.append(Figure(name, "Redis CPU per publication", "µs", 0, ("<=", 1.0),
                              by_server(group, lambda r: (r["result"].get("server_cpu_s_per_1m") or 0) * r["subs"])))
        figures.append(Figure(name, "both nodes' CPU per delivery", "µs", 2, COST,
                              by_server(group, lambda r: r["result"].get("nodes_cpu_s_per_1m"))))
        figures.append(Figure(name, "p99", "ms", 2, COST, by_server(group, lambda r: r["result"]["p99_ms"])))
    return figures


def proxy_figures(rows):
    figures = []
    names = {"proxy_connect": "connect", "proxy_rpc": "RPC"}
    both = list(groups(rows, "proxy_connect", lambda r: (r["scenario"], r["label"])).items())
    both += groups(rows, "proxy_rpc", lambda r: (r["scenario"], r["label"])).items()
    for (scenario, label), group in both:
        via = {"jwt": "with a JWT", "http": "through the HTTP proxy", "grpc": "through the gRPC proxy"}[label]
        name = f"{names[scenario]} {via}, 16 workers"
        figures.append(Figure(name, "server CPU per operation", "µs", 1, COST,
                              by_server(group, lambda r: r.get("server_cpu_us_per_op"))))
        figures.append(Figure(name, "p99", "ms", 2, COST, by_server(group, lambda r: r["p99_ms"])))
    return figures


def sync_figures(rows):
    figures = []
    for _, group in groups(rows, "delta", lambda r: None).items():
        name = "fossil delta, 4 KB document, 100 + 100 subs"
        figures.append(Figure(name, "delta bytes per publication", "B", 0, ("<=", 1.0),
                              by_server(group, lambda r: r.get("delta_wire_bytes_per_publication"))))
        figures.append(Figure(name, "server CPU for the run", "s", 2, COST, by_server(group, lambda r: r.get("server_cpu_s"))))
    for _, group in groups(rows, "map", lambda r: None).items():
        name = "map state sync, 10k keys to 1k subs"
        figures.append(Figure(name, "server CPU for the sync", "s", 2, COST, by_server(group, lambda r: r.get("server_cpu_s"))))
        figures.append(Figure(name, "all live after", "s", 2, COST, by_server(group, lambda r: r.get("sync_seconds_all"))))
    for kind, group in groups(rows, "consumer", lambda r: r["type"]).items():
        figures.append(Figure(f"consumer {kind}, draining", "server CPU per command", "µs", 1, COST,
                              by_server(group, lambda r: r.get("cpu_us_per_command"))))
    return figures


def table(rows):
    """The RESULTS.md section, or nothing when no Centrifugo row was recorded."""
    if not any(r.get("server") == CENTRIFUGO for r in rows):
        return []
    figures = (simple_figures(rows) + search_figures(rows) + fixed_figures(rows) + cluster_figures(rows)
               + proxy_figures(rows) + sync_figures(rows))
    figures = [f for f in figures if CENTRIFUGO in f.values]
    met = sum(f.verdict() == "met" for f in figures)
    missed = sum(f.verdict() == "**missed**" for f in figures)
    out = ["## Spinwire against Centrifugo", "",
           "Every scenario below ran against both servers in the same invocation, on the same config file, core and "
           "load generator, alternating the servers inside each repetition. Cells are the median over the runs "
           "(range in brackets); the ratio is Spinwire's median over Centrifugo's. Costs (CPU, memory, time, latency) "
           "meet their target at or below it, rates at or above it. CPU and tails of searches are compared at the "
           "highest step every run of both servers kept up with cleanly while using under 80 % of its core, so at "
           "equal offered load and before saturation. `–` in a Centrifugo cell: it delivered nothing inside the "
           "measured window at that load. The consumer rows come from `run.sh consumers` (a separate, by-hand "
           "invocation that `all` does not run).", "",
           f"Targets met: {met}; missed: {missed}.", "",
           "| scenario | figure | Spinwire | Centrifugo | ratio | target | verdict | runs |",
           "|---|---|---|---|---|---|---|---|"]
    out += [f.line() for f in figures]
    return out + [""]
