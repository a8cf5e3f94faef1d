"""Turning results into a markdown table, a JSON file and a PNG chart."""
import json
import math
import os

from fastembed.bench import registry

STATUS_CELL = {"wrong": "wrong", "skipped": "–", "error": "error"}


def _ms(value):
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _x(value):
    if value >= 10:
        return f"{value:.1f}×"
    return f"{value:.2f}×" if value >= 0.1 else f"{value:.2g}×"


def _op_titles(results):
    titles = {}
    for cell in results["results"]:
        if cell["op"] not in titles:
            try:
                titles[cell["op"]] = registry.get_op(cell["op"]).title
            except KeyError:
                titles[cell["op"]] = cell["op"]
    return titles


def summary(results):
    """A compact table: per (workload, threads), fastembed's median ms and its speedup over the fastest peer.

    Workloads that ran different ops (lookups, bags) get a table each, so that no column is empty."""
    titles = _op_titles(results)
    cells = {(c["op"], c["workload"], c["threads"]): c for c in results["results"]}
    rows = list(dict.fromkeys((c["workload"], c["threads"]) for c in results["results"]))
    order = {wl: i for i, wl in enumerate(dict.fromkeys(wl for wl, _ in rows))}
    rows.sort(key=lambda r: (order[r[0]], r[1]))
    groups = {}
    for wl, n in rows:
        ops = tuple(op for op in titles if any((op, wl, t) in cells for _, t in rows))
        groups.setdefault(ops, []).append((wl, n))
    lines = ["### Summary: fastembed's median ms (its speedup over the fastest peer)"]
    for ops, group in groups.items():
        lines += ["", "| workload | threads | " + " | ".join(f"{titles[op]}" for op in ops) + " |",
                  "|---|---|" + "---:|" * len(ops)]
        for wl, n in group:
            row = [wl, str(n)]
            for op in ops:
                cell = cells.get((op, wl, n))
                if cell is None:
                    row.append("")
                elif cell["fastest_peer"] is None:
                    row.append(_ms(cell["fastembed_ms"]))
                else:
                    short = next(i["short"] for i in cell["impls"] if i["name"] == cell["fastest_peer"])
                    row.append(f"{_ms(cell['fastembed_ms'])} ({_x(cell['speedup_vs_fastest_peer'])} {short})")
            lines.append("| " + " | ".join(row) + " |")
    return lines


def markdown(results):
    """The results as markdown: one table per op, one row per (workload, threads), then the legend and notes."""
    lines = []
    machine = results["machine"]
    config = results["config"]
    copy = results["copy_bandwidth"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    lines.append(f"Machine: {machine['cpu']}, {machine['cores']} cores; {versions}.")
    lines.append("Copy bandwidth reference: " + ", ".join(
        f"{t} thread{'s' if t != '1' else ''}: {c['gbps']:.1f} GB/s" for t, c in copy.items()) + ".")
    load = results.get("load_average") or {}
    if load.get("start") is not None:
        busy = " (other processes were competing for the cores: expect distorted figures, worst at all cores)" if (
            max(load["start"], load["end"] or 0) > 0.5 * machine["cores"]) else ""
        lines.append(f"Load average (1 min) at start and end: {load['start']:g} and {load['end']:g}{busy}.")
    if config.get("quick"):
        lines.append(f"Quick run: {config['rounds']} rounds; V and N of rand, zipf, glove, smalldim scaled by "
                     f"{config['scale']:g}; slow peers' time budgets scaled by {config['budget_scale']:g}.")
    lines.append("")
    lines.extend(summary(results))
    lines.append("")
    lines.append(f"fastembed: {', '.join(sorted({c['impls'][0]['note'] for c in results['results']}))}.")
    lines.append("")
    capped_seen = False
    for op, title in _op_titles(results).items():
        cells = [c for c in results["results"] if c["op"] == op]
        workload_order = {wl: i for i, wl in enumerate(dict.fromkeys(c["workload"] for c in cells))}
        cells.sort(key=lambda c: (workload_order[c["workload"]], c["threads"]))
        notes = {i["name"]: i.get("note", "") for c in cells for i in c["impls"][1:]}
        names, labels = [], {}
        for cell in cells:
            for impl in cell["impls"][1:]:
                if impl["name"] not in names and impl["status"] != "excluded":
                    names.append(impl["name"])
                    labels[impl["name"]] = impl["short"]
        header = ["workload", "threads", "fastembed"] + [labels[n] for n in names] + [
            "fastembed GB/s", "% of copy", "vs fastest peer"]
        lines.append(f"### {title} (`{op}`): median ms")
        lines.append("")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|")
        for cell in cells:
            impls = {impl["name"]: impl for impl in cell["impls"]}
            fe = cell["impls"][0]
            half_iqr = (fe["q3_ms"] - fe["q1_ms"]) / 2 / fe["median_ms"] * 100
            row = [cell["workload"], str(cell["threads"]), f"{_ms(fe['median_ms'])} ±{half_iqr:.0f}%"]
            for name in names:
                impl = impls.get(name)
                if impl is None:
                    row.append("")
                elif impl["status"] != "ok":
                    row.append(STATUS_CELL.get(impl["status"], impl["status"]))
                else:
                    mark = "†" if impl.get("capped") else ""
                    capped_seen |= bool(mark)
                    row.append(f"{_ms(impl['median_ms'])}{mark} ({_x(impl['speedup'])})")
            row.append(f"{cell['fastembed_gbps']:.1f}")
            row.append(f"{cell['copy_fraction'] * 100:.0f}%")
            fastest = cell["fastest_peer"]
            row.append(f"{_x(cell['speedup_vs_fastest_peer'])} ({impls[fastest]['short']})" if fastest else "–")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        keys = [f"{labels[n]}: `{n}`" + (f" ({notes[n]})" if notes.get(n) else "") for n in names]
        if keys:
            lines.append("Columns: " + "; ".join(keys) + ".")
            lines.append("")
    lines.append("Peer cells: median ms (fastembed's speedup over that peer; > 1× means fastembed is faster). "
                 "fastembed: median ±half its interquartile range. `–` skipped, `wrong`: failed the check "
                 "against fastembed's result and was not timed.")
    if capped_seen:
        lines.append(f"† time-capped: a slow peer timed in fewer rounds (at least {config['min_samples']} samples) "
                     "than the others; the JSON gives each one's sample count.")
    lines.append(f"GB/s: {config['bytes_formula']}; % of copy: fastembed's GB/s over the copy reference at the "
                 f"same thread count ({next(iter(copy.values()))['method']}).")
    threads = ("Threads: fastembed `n_threads=`; torch and FBGEMM `torch.set_num_threads`; numpy's take and "
               "add.at are single-threaded. ")
    if config.get("isolate"):
        threads += ("Each thread count ran in a worker process of its own, started with jax's XLA_FLAGS for that "
                    "count and pinned to that many cores when below all of them.")
    else:
        threads += "Every thread count ran in this one process (--in-process): jax was skipped."
    lines.append(threads)
    if results["notes"]:
        lines.append("")
        lines.append("Notes:")
        lines.extend(f"- {note}" for note in results["notes"])
    return "\n".join(lines)


def write_json(results, path):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(results, handle, indent=1)
        handle.write("\n")


# Speedups beyond these are drawn cut at the axis edge (their labels give the value).
CLIP_LO, CLIP_HI = 0.05, 50.0

# A fixed colour per peer (by short label), so the same peer has the same colour in every panel.
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
            "#bcbd22", "#7f7f7f"]


def plot(results, path):
    """A PNG of fastembed's speedup over each peer: one panel per (op, threads), one bar per (workload, peer)
    growing from the 1x line on a log scale (right: fastembed faster), each labelled with its peer and value.

    Returns the path; raises ImportError when matplotlib is missing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    cells = results["results"]
    titles = _op_titles(results)
    ops = list(titles)
    threads = sorted({c["threads"] for c in cells})
    peer_labels = list(dict.fromkeys(i["short"] for c in cells for i in c["impls"][1:] if i["status"] == "ok"))
    cells = [dict(c, impls=[i for i in c["impls"] if i["status"] != "excluded"]) for c in cells]
    colours = {label: _PALETTE[i % len(_PALETTE)] for i, label in enumerate(peer_labels)}
    values = [i["speedup"] for c in cells for i in c["impls"][1:] if i["status"] == "ok"] + [1.0]
    # The axis covers the values within [CLIP_LO, CLIP_HI] (an outlier must not squash the rest: bars beyond are
    # cut at the edge, marked, and labelled with their value), plus room for the labels beside the bars.
    core_lo, core_hi = max(min(values), CLIP_LO), min(max(values), CLIP_HI)
    left, right = (0.25 if core_lo < 1 else 0.03), 0.25
    span = max(math.log10(core_hi / core_lo), 0.3) / (1 - left - right)
    lo, hi = core_lo / 10 ** (left * span), core_hi * 10 ** (right * span)

    def layout(op):
        """[(workload, [impl, ...])] for one op, over the union of what ran at any thread count."""
        rows = []
        for wl in dict.fromkeys(c["workload"] for c in cells if c["op"] == op):
            shorts = list(dict.fromkeys(i["short"] for c in cells if c["op"] == op and c["workload"] == wl
                                        for i in c["impls"][1:] if i["status"] == "ok"))
            rows.append((wl, shorts))
        return rows

    layouts = {op: layout(op) for op in ops}
    heights = [sum(max(1, len(shorts)) + 0.7 for _, shorts in layouts[op]) * 0.26 + 0.9 for op in ops]
    fig, axes = plt.subplots(len(ops), len(threads), figsize=(7.0 * len(threads), sum(heights) + 1.0),
                             squeeze=False, gridspec_kw={"height_ratios": heights}, constrained_layout=True)
    for row, op in enumerate(ops):
        for col, n in enumerate(threads):
            ax = axes[row][col]
            by_workload = {c["workload"]: c for c in cells if c["op"] == op and c["threads"] == n}
            y, ticks, separators = 0.0, [], []
            for wl, shorts in layouts[op]:
                cell = by_workload.get(wl)
                impls = {i["short"]: i for i in cell["impls"][1:]} if cell else {}
                start = y
                for short in shorts or [None]:
                    impl = impls.get(short)
                    if impl is not None and impl["status"] == "ok":
                        value = impl["speedup"]
                        shown = min(max(value, core_lo), core_hi)
                        ax.barh(y, shown - 1.0, left=1.0, height=0.78, color=colours[short])
                        slower = value < 1.0
                        clipped = "◀ " if value < core_lo else " ▶" if value > core_hi else ""
                        text = f"{clipped}{short} {_x(value)}" if slower else f"{short} {_x(value)}{clipped}"
                        ax.text(shown * (0.93 if slower else 1.07), y, text, va="center",
                                ha="right" if slower else "left", fontsize=7.5,
                                color="#b00000" if slower else "black", fontweight="bold" if slower else "normal")
                    elif short is not None:
                        status = impl["status"] if impl else "not run"
                        ax.text(1.07, y, f"{short}: {STATUS_CELL.get(status, status)}", va="center", ha="left",
                                fontsize=7.5, color="#777777")
                    y += 1
                ticks.append((start + y - 1) / 2)
                y += 0.7
                separators.append(y - 0.85)
            for sep in separators[:-1]:
                ax.axhline(sep, color="#dddddd", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_xlim(lo, hi)
            ax.set_ylim(y - 0.55, -0.6)
            ax.set_yticks(ticks)
            ax.set_yticklabels([wl for wl, _ in layouts[op]], fontsize=9, fontweight="bold")
            ax.tick_params(axis="y", length=0)
            ax.axvline(1.0, color="black", linewidth=1.3)
            ax.grid(axis="x", which="major", alpha=0.35)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
            ax.tick_params(axis="x", labelsize=8)
            ax.set_title(f"{titles[op]}, {n} thread{'s' if n > 1 else ''}", fontsize=10.5)
            if row == len(ops) - 1:
                ax.set_xlabel("fastembed's speedup over the peer (log scale); right of 1×: fastembed is faster",
                              fontsize=8.5)
    machine = results["machine"]
    fig.suptitle(f"fastembed vs peers: median time of peer / median time of fastembed\n"
                 f"{machine['cpu']}, {machine['cores']} cores", fontsize=11)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
