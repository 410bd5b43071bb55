"""Renders tests/bench/results.jsonl (written by run.sh) as the RESULTS.md tables."""

import json
import os
import platform
import sys

import versus


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} × {model}, Linux {platform.release()}"


def fmt(value, digits=1):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def identity(row):
    """What a row measured (everything but its figures): repetitions share an identity."""
    keys = ("scenario", "server", "engine", "protocol", "subs", "conns", "subscriptions_each", "transport", "streams",
            "label")
    rate = (row.get("result") or {}).get("target_deliveries_per_s", row.get("target_writes_per_s"))
    return tuple(row.get(k) for k in keys) + (rate,)


def headline(row):
    """The figure repetitions are ranked by."""
    if "steps" in row:
        return (row.get("max_clean") or {}).get("deliveries_per_s", 0)
    if "result" in row:
        return row["result"]["p50_ms"]
    for key in ("server_rss_bytes_per_conn", "per_s", "seconds", "publishes_per_s", "writer_cpu_us_per_write"):
        if key in row:
            return row[key]
    return 0


def medians(rows):
    """One row per identity: the median repetition, with `reps` and `spread` (min, max) of the
    headline figure added. Order of first appearance is kept."""
    groups = {}
    for row in rows:
        groups.setdefault(identity(row), []).append(row)
    out = []
    for group in groups.values():
        ranked = sorted(group, key=headline)
        median = dict(ranked[(len(ranked) - 1) // 2])
        median["reps"] = len(group)
        median["spread"] = (headline(ranked[0]), headline(ranked[-1]))
        # Secondary figures of fixed-load runs, for ranges beside the headline's.
        median["figures"] = {key: [r["result"][key] for r in group if r["result"].get(key) is not None]
                             for key in ("server_cpu_s_per_1m",) if all("result" in r for r in group)}
        out.append(median)
    return out


def busy(step):
    """Share of its core the load generator used at a step: above 50 % it had less than the 2×
    headroom the method asks for, and the rate may be the generator's limit, not the server's."""
    rate, cpu = step.get("deliveries_per_s"), step.get("loadgen_cpu_s_per_1m")
    if not rate or cpu is None:
        return "–"
    share = rate * cpu / 1e6
    return f"{share:.0%}" + (" ⚠" if share > 0.5 else "")


def label(row):
    """Protocol, and the transport when subscribers did not use WebSocket."""
    if row.get("transport") == "grpc":
        return f"{row['protocol']} over gRPC stream"
    return row["protocol"]


def spread(row, digits=0, scale=1.0):
    """` (min–max over N runs)` when a figure was repeated."""
    if row.get("reps", 1) < 2:
        return ""
    low, high = row["spread"]
    return f" ({fmt(low * scale, digits)}–{fmt(high * scale, digits)}, {row['reps']} runs)"


def cpu_table(rows):
    """Server CPU per 1M deliveries in latency mode against the floor server and the kernel's own
    price of one write per delivery (`kernel_floor`)."""
    subs = 10000
    fixed = [r for r in rows if r["scenario"] == "fanout" and "result" in r and r["subs"] == subs]
    kernel = {r["target_writes_per_s"]: r for r in rows if r["scenario"] == "kernel-floor"}
    if not fixed:
        return []
    by_rate = {}
    for r in fixed:
        by_rate.setdefault(r["result"]["target_deliveries_per_s"], {})[r["server"]] = r
    table = ["## CPU per 1M deliveries (latency mode: no write delay)", "",
             "Server process CPU-seconds (user + system, which on loopback includes the receivers' TCP path) per "
             "million deliveries, one channel with 10,000 JSON subscribers, 128-byte payloads. `kernel floor` is "
             "`kernel_floor`: one plain `write()` per delivery to 10,000 loopback sockets, paced the same way, read "
             "by a bare epoll loop, with no server: the least any server pays when it cannot coalesce.", "",
             "| offered deliveries/s | publications/s | spinwire CPU s per 1M | centrifugo CPU s per 1M | floor server CPU s per 1M | kernel floor CPU s per 1M (one write each) |",
             "|---|---|---|---|---|---|"]
    for rate in sorted(by_rate):
        pair = by_rate[rate]

        def figure(server):
            if server not in pair:
                return "–"
            cpu = pair[server]["result"]["server_cpu_s_per_1m"]
            return f"{fmt(cpu, 2)}{spread_of(pair[server], 'server_cpu_s_per_1m')}"

        floor = kernel.get(rate)
        floor_text = f"{fmt(floor['writer_cpu_us_per_write'], 2)}{spread(floor, 2)}" if floor else "–"
        table.append(f"| {fmt(rate, 0)} | {fmt(rate / subs, 1)} | {figure('spinwire')} | {figure('centrifugo')} | "
                     f"{figure('floor')} | {floor_text} |")
    flat = kernel.get(0)  # flat out (0.0 and 0 are one key)
    if flat:
        table += ["", f"Flat out, the kernel floor is {fmt(flat['writer_cpu_us_per_write'], 2)} µs per write{spread(flat, 2)} "
                  f"at {fmt(flat['writes_per_s'], 0)} writes/s."]
    return table + [""]


def spread_of(row, key):
    """The min–max of one result figure over a row's repetitions (`medians` keeps them)."""
    values = row.get("figures", {}).get(key)
    if not values or len(values) < 2:
        return ""
    return f" ({fmt(min(values), 2)}–{fmt(max(values), 2)})"


def main(path):
    raw = [json.loads(line) for line in open(path) if line.strip()]
    rows = medians(raw)
    out = ["# Benchmark results", ""]
    out.append(f"Machine: {machine()}. Server pinned to CPU 0, load generator to CPU 1 (`taskset`).")
    out.append("Regenerate with `CENTRIFUGO_BIN=<centrifugo> tests/bench/run.sh all` (about 80 minutes with "
               "Centrifugo); raw lines are in `results.jsonl`. Centrifugo is 6.9.1 built from its public source with "
               "Go (its generated Swagger UI file stubbed out, which the build needs and the source snapshot lacks).")
    out.append("")
    out.append("Every measurement is repeated on a freshly started server (`REPEAT`, default 3). Each row is the "
               "median run by its headline figure; `(a–b, N runs)` is the range of that figure over the runs.")
    out.append("")
    out += versus.table(raw)

    fan = [r for r in rows if r["scenario"] in ("fanout", "many") and "steps" in r]
    if fan:
        out += ["## Fan-out", "",
                "Highest offered rate with zero loss, duplicates and reordering that the sender kept up with "
                "(`max clean`), and the highest that also had p99 < 50 ms (`max p99<50`). `floor` is the reference "
                "server (tokio + tungstenite, no protocol); the ratio is Spinwire's clean maximum over the floor's. "
                "`loadgen busy` is the generator's share of its core at the clean maximum: ⚠ marks rates where it "
                "had less than 2× headroom, so the maximum there may be the generator's.", "",
                "| scenario | subs | protocol | server | max clean deliveries/s | p99 ms there | max p99<50 | server CPU s per 1M | loadgen CPU s per 1M | loadgen busy | vs floor |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        floors = {(r["scenario"], r["subs"], r["protocol"]): r for r in fan if r["server"] == "floor"}
        # The floor speaks WebSocket: only WebSocket rows get a ratio.
        for r in fan:
            clean = r.get("max_clean") or {}
            best = r.get("max") or {}
            ratio = "–"
            floor = floors.get((r["scenario"], r["subs"], r["protocol"]))
            if r["server"] != "floor" and r.get("transport") != "grpc" and floor and (floor.get("max_clean") or {}).get("deliveries_per_s"):
                ratio = f"{clean.get('deliveries_per_s', 0) / floor['max_clean']['deliveries_per_s']:.2f}"
            out.append(
                f"| {r['scenario']} | {fmt(r['subs'])} | {label(r)} | {r['server']} | "
                f"{fmt(clean.get('deliveries_per_s'), 0)}{spread(r)} | {fmt(clean.get('p99_ms'))} | {fmt(best.get('deliveries_per_s'), 0)} | "
                f"{fmt(clean.get('server_cpu_s_per_1m'), 2)} | {fmt(clean.get('loadgen_cpu_s_per_1m'), 2)} | "
                f"{busy(clean)} | {ratio} |")
        out.append("")

    out += metrics_cost_table(rows)

    cross = [r for r in rows if r["scenario"] == "cross-node"]
    if cross:
        out += ["## Across nodes on Redis (publisher on node A, subscribers on node B)", "",
                "Two nodes of one server and one redis-server share CPU 0, the load generator has CPU 1. Channels keep "
                "history, so each publication runs the Lua publish script. Server CPU figures are Redis's; the "
                "last column is the two nodes' own.", "",
                "| server | publications/s | subscribers | deliveries/s | p50 ms | p99 ms | p99.9 ms | lost | Redis CPU µs per publication | publications per Redis CPU-second | nodes' CPU s per 1M deliveries |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(cross, key=lambda r: (r["result"]["target_deliveries_per_s"], r.get("server") != "spinwire")):
            x = r["result"]
            per_pub_us = (x["server_cpu_s_per_1m"] or 0) * r["subs"]
            per_cpu_s = f"{fmt(1e6 / per_pub_us, 0)}" if per_pub_us else "-"
            out.append(f"| {r.get('server', 'spinwire')} | {fmt(x['target_deliveries_per_s'] / r['subs'], 0)} | {r['subs']} | {fmt(x['deliveries_per_s'], 0)} | "
                       f"{fmt(x['p50_ms'], 2)} | {fmt(x['p99_ms'], 2)} | {fmt(x['p999_ms'], 2)} | {x['lost']} | "
                       f"{fmt(per_pub_us, 0)} | {per_cpu_s} | {fmt(x.get('nodes_cpu_s_per_1m'), 2)} |")
        out.append("")

    def latency_table(title, intro, rows_):
        if not rows_:
            return []
        table = [title, "", intro, "",
                 "| server | offered deliveries/s | delivered/s | p50 ms | p99 ms | p99.9 ms | max ms | lost | server CPU s per 1M |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows_, key=lambda r: (r["result"]["target_deliveries_per_s"], r["server"] != "spinwire")):
            x = r["result"]
            table.append(f"| {r['server']} | {fmt(x['target_deliveries_per_s'], 0)} | {fmt(x['deliveries_per_s'], 0)} | "
                         f"{fmt(x['p50_ms'], 2)}{spread(r, 2)} | {fmt(x['p99_ms'], 2)} | {fmt(x['p999_ms'], 2)} | "
                         f"{fmt(x['max_ms'], 2)} | {x['lost']} | {fmt(x['server_cpu_s_per_1m'], 2)} |")
        return table + [""]

    out += latency_table(
        "## Latency at fixed load (10k subscribers, many channels, JSON)",
        "10,000 connections, each subscribed to a personal channel and a group channel of 10; publications go "
        "to the groups at 10 %, 50 % and 80 % of the `many` maximum with p99 < 50 ms above (Centrifugo's median "
        "when it was measured). The p50 column's range is over the runs.",
        [r for r in rows if r["scenario"] == "many" and "result" in r])
    out += latency_table(
        "## Latency at fixed load (one channel, 10k subscribers, JSON)",
        "Every publication is 10,000 socket writes on one server core, so the median subscriber waits for "
        "about 5,000 of them: the p50 here is set by the per-write cost, not by queueing. From 250k/s on, "
        "one pass over the sockets takes longer than the gap between publications, so the server core writes "
        "all the time and each write carries what queued during the previous pass (the floor server does the "
        "same).",
        [r for r in rows if r["scenario"] == "fanout" and "result" in r and r["server"] != "floor"])

    out += cpu_table(rows)

    idle = [r for r in rows if r["scenario"] == "idle"]
    if idle:
        out += ["## Idle memory per WebSocket connection", "",
                "Server RSS growth divided by connections, after connect (+ subscribe) and a 2 s settle. Kernel socket "
                "memory (slab, both ends of each loopback connection) is reported separately.", "",
                "| server | connections | subscriptions each | server RSS per conn (KB) | kernel slab per conn pair (KB) | server RSS total (MB) |",
                "|---|---|---|---|---|---|"]
        for r in sorted(idle, key=lambda r: (r["conns"], r["subscriptions_each"], r.get("server") != "spinwire")):
            out.append(f"| {r.get('server', 'spinwire')} | {fmt(r['conns'])} | {r['subscriptions_each']} | {fmt(r['server_rss_bytes_per_conn'] / 1024, 2)}{spread(r, 2, 1 / 1024)} | "
                       f"{fmt(r['kernel_slab_bytes_per_conn_both_ends'] / 1024, 2)} | {fmt(r['server_rss_total_mb'])} |")
        out.append("")

    # Connect and API figures: the latest run of each kind (results.jsonl accumulates runs).
    # Connect and API figures: the median run of each kind and server.
    latest = {}
    for r in rows:
        if r["scenario"] in ("connect", "api"):
            latest.setdefault((r["scenario"], r.get("transport", "http")), []).append(r)
    for (scenario, transport), group in latest.items():
        group.sort(key=lambda r: r.get("server", "spinwire") != "spinwire")
        if scenario == "connect":
            opening = "a gRPC stream on a shared HTTP/2 connection" if transport == "grpc" else "WebSocket upgrade"
            out += [f"## Connect rate ({transport})", "",
                    f"{fmt(group[0]['conns'])} clients ({opening} + connect with a JWT + one subscribe).", "",
                    "| server | seconds | connects per second |", "|---|---|---|"]
            out += [f"| {r.get('server', 'spinwire')} | {r['seconds']:.2f}{spread(r, 2)} | {fmt(r['connects_per_s'], 0)} |" for r in group]
        else:
            r = group[0]
            if transport == "http":
                how = f"HTTP `POST /api/publish`, {r['conns']} keep-alive connections"
            else:
                how = f"gRPC `CentrifugoApi/Publish`, {r['conns']} HTTP/2 connections × {r['streams']} streams"
            out += [f"## Server API publish rate over {transport} (no subscribers)", "", f"{how}, closed loop.", "",
                    "| server | publishes per second | server CPU µs per publish | errors |", "|---|---|---|---|"]
            out += [f"| {r.get('server', 'spinwire')} | {fmt(r['publishes_per_s'], 0)}{spread(r)} | {fmt(r['server_cpu_us_per_publish'])} | "
                    f"{r['errors']} |" for r in group]
        out.append("")
    out += proxy_table(raw)
    out += sync_tables(raw)
    out += consumers_table(raw)
    # What the figures say (causes, caveats) is written by hand and kept across re-renders.
    notes = os.path.join(os.path.dirname(os.path.abspath(path)), "NOTES.md")
    if os.path.exists(notes):
        out += [open(notes).read().rstrip(), ""]
    print("\n".join(out))


def metrics_cost_table(rows):
    """`metrics_cost`: the same searches against the same code with the metrics compiled out
    (`baseline`: `--features metrics-off`)."""
    cost = [r for r in rows if r["scenario"].startswith("metrics_cost_") and "steps" in r]
    if not cost:
        return []
    out = ["## Cost of the metrics", "",
           "Fan-out (one channel) and many-channel searches, 10,000 JSON subscribers, against this build "
           "and the same code built with `--features metrics-off` (`baseline`: every count, observation "
           "and the clock reads for them compiled out), alternating. Server CPU per 1M deliveries is at "
           "the 50,000/s step, where both keep up.", "",
           "| scenario | server | max clean deliveries/s | max p99<50 | server CPU s per 1M at 50k/s |",
           "|---|---|---|---|---|"]
    for r in cost:
        first = next((s for s in r["steps"] if s.get("target_deliveries_per_s") == 50000), {})
        out.append(f"| {r['scenario'].removeprefix('metrics_cost_')} | {r['server']} | "
                   f"{fmt((r.get('max_clean') or {}).get('deliveries_per_s'), 0)}{spread(r)} | "
                   f"{fmt((r.get('max') or {}).get('deliveries_per_s'), 0)} | {fmt(first.get('server_cpu_s_per_1m'), 2)} |")
    return out + [""]


def consumers_table(rows):
    """`consumers`: each consumer type draining a pre-filled source, per server; the median of
    the runs with their range."""
    groups = {}
    for r in rows:
        if r["scenario"] == "consumer":
            groups.setdefault((r["type"], r["server"]), []).append(r)
    if not groups:
        return []

    def cell(group, key, digits):
        values = sorted(r[key] for r in group)
        median = values[len(values) // 2]
        return f"{fmt(median, digits)} ({fmt(values[0], digits)}–{fmt(values[-1], digits)})"

    commands = next(iter(groups.values()))[0]["commands"]
    out = ["## Consumers", "",
           f"Each run pre-fills a fresh source with {commands:,} publish commands (16 channels, no subscribers), "
           "then starts the server with one consumer on it and times it from the first processed command to the "
           "last, with the server process's CPU over the same span (`tests/bench/run.sh consumers`). The source's "
           "own server (PostgreSQL, Redis, NATS, Kafka) shares the two cores; nothing is pinned. Median of the runs "
           "(range).", "",
           "| type | server | commands/s | server CPU µs per command | runs |",
           "|---|---|---|---|---|"]
    for (kind, server), group in sorted(groups.items()):
        out.append(f"| {kind} | {server} | {cell(group, 'commands_per_s', 0)} | "
                   f"{cell(group, 'cpu_us_per_command', 1)} | {len(group)} |")
    return out + [""]


def proxy_table(rows):
    """Connects through the connect proxy against connects with a JWT, and RPC round trips: each
    figure the median of its repetitions, with their range."""
    groups = {}
    for r in rows:
        if r["scenario"] in ("proxy_connect", "proxy_rpc"):
            groups.setdefault((r.get("server", "spinwire"), r["scenario"], r["label"]), []).append(r)
    if not groups:
        return []

    def median(group, key):
        values = sorted(r[key] for r in group)
        return values[(len(values) - 1) // 2], values[0], values[-1]

    def cell(group, key, digits):
        mid, low, high = median(group, key)
        if len(group) < 2:
            return fmt(mid, digits)
        return f"{fmt(mid, digits)} ({fmt(low, digits)}–{fmt(high, digits)})"


    runs = max(len(g) for g in groups.values())
    out = ["## Proxies", "",
           f"Closed loops of 16 workers for 5 s against a trivial backend (`proxy_bench backend`, on the generator's "
           f"core); medians of {runs} runs, ranges in brackets. A connect is a new WebSocket, the connect command and "
           "its reply; the JWT row is the same connect with a token and no proxy call. Added latency is the proxy "
           "row's median p50/p99 minus the JWT row's.", "",
           "| server | what | per second | p50 ms | p99 ms | added p50 / p99 ms |",
           "|---|---|---|---|---|---|"]
    names = {"proxy_connect": "connect", "proxy_rpc": "RPC round trip"}
    for (server, scenario, kind), group in sorted(groups.items(), key=lambda item: (item[0][1], item[0][2], item[0][0] != "spinwire")):
        jwt = groups.get((server, "proxy_connect", "jwt"))
        added = "–"
        if scenario == "proxy_connect" and kind != "jwt" and jwt:
            p50 = median(group, "p50_ms")[0] - median(jwt, "p50_ms")[0]
            p99 = median(group, "p99_ms")[0] - median(jwt, "p99_ms")[0]
            added = f"{p50:+.2f} / {p99:+.2f}"
        via = "a JWT, no proxy" if kind == "jwt" else ("HTTP proxy" if kind == "http" else "gRPC proxy")
        out.append(f"| {server} | {names[scenario]} with {via} | {cell(group, 'per_s', 0)} | {cell(group, 'p50_ms', 2)} | "
                   f"{cell(group, 'p99_ms', 2)} | {added} |")
    return out + [""]

def sync_tables(rows):
    """Delta compression and map state sync (`run.sh sync`), Spinwire and Centrifugo alternating
    on the same config and core: medians of the runs, ranges in brackets."""
    groups = {}
    for r in rows:
        if r["scenario"] in ("delta", "map"):
            groups.setdefault((r["scenario"], r.get("server", "spinwire")), []).append(r)
    if not groups:
        return []

    def cell(group, key, digits, scale=1.0):
        values = sorted(r[key] * scale for r in group if r.get(key) is not None)
        if not values:
            return "–"
        mid = values[(len(values) - 1) // 2]
        if len(values) < 2:
            return fmt(mid, digits)
        return f"{fmt(mid, digits)} ({fmt(values[0], digits)}–{fmt(values[-1], digits)})"

    order = lambda item: (item[0][1] != "spinwire", item[0][1])
    out = []
    deltas = sorted(((k, g) for k, g in groups.items() if k[0] == "delta"), key=order)
    if deltas:
        first = deltas[0][1][0]
        out += ["## Delta compression (fossil)", "",
                f"A {fmt(first['doc_bytes'], 0)}-byte JSON document, {first['changed_bytes_per_publication']} bytes of it "
                f"rewritten per publication (about 1 %), {first['publications']} publications through the HTTP API to "
                f"{first['subscribers_each']} subscribers with `delta: \"fossil\"` and as many without, Protobuf over "
                "WebSocket. Bytes are what each subscriber read from its socket per publication (frames included); every "
                "subscriber rebuilt every publication and checked it against what was published.", "",
                "| server | plain bytes per publication | delta bytes per publication | delta / plain | deltas received (of publications) | server CPU s |",
                "|---|---|---|---|---|---|"]
        for (_, server), group in deltas:
            out.append(f"| {server} | {cell(group, 'plain_wire_bytes_per_publication', 0)} | "
                       f"{cell(group, 'delta_wire_bytes_per_publication', 0)} | {cell(group, 'delta_to_plain', 3)} | "
                       f"{cell(group, 'deltas_received_per_subscriber', 0)} of {group[0]['publications']} | "
                       f"{cell(group, 'server_cpu_s', 2)} |")
        out.append("")
    maps = sorted(((k, g) for k, g in groups.items() if k[0] == "map"), key=order)
    if maps:
        first = maps[0][1][0]
        out += ["## Map state sync", "",
                f"A map channel filled with {fmt(first['keys'], 0)} keys through `map_publish`, then "
                f"{fmt(first['subscribers'], 0)} connected subscribers subscribe at once and page through the state "
                f"({first['page_size']} keys per page, {first['pages_per_subscriber']} pages each) until live. "
                "Time is from the start until the last subscriber is live; CPU is the server's over that time.", "",
                "| server | keys delivered | all live after s | median subscriber s | server CPU s | keys per server CPU-second |",
                "|---|---|---|---|---|---|"]
        for (_, server), group in maps:
            for r in group:
                r["keys_per_cpu_s"] = r["keys_delivered"] / r["server_cpu_s"] if r.get("server_cpu_s") else None
            out.append(f"| {server} | {fmt(first['keys_delivered'], 0)} | {cell(group, 'sync_seconds_all', 2)} | "
                       f"{cell(group, 'sync_seconds_p50', 2)} | {cell(group, 'server_cpu_s', 2)} | "
                       f"{cell(group, 'keys_per_cpu_s', 0)} |")
        out.append("")
    return out


if __name__ == "__main__":
    main(sys.argv[1])
