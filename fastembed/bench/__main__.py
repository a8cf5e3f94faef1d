"""``python -m fastembed.bench``: fastembed side by side with numpy, torch, jax and FBGEMM (see ``--help``)."""
import argparse
import sys

from fastembed.bench import peers, registry, report, runner
from fastembed.bench.workloads import DEFAULT_WORKLOADS, WORKLOADS


def _list(value):
    return [item.strip() for item in value.split(",") if item.strip()]


def _threads(value):
    out = []
    for item in _list(value):
        out.append(peers.usable_cores() if item == "all" else int(item))
    return out


def parse_args(argv):
    ops = registry.all_ops()
    parser = argparse.ArgumentParser(
        prog="python -m fastembed.bench",
        description="Time fastembed's kernels and every installed peer, interleaved in one process per thread "
                    "count, after checking each peer's result against fastembed's.",
        epilog="ops: " + ", ".join(name + ("" if op.default else " [opt-in]") for name, op in ops.items())
               + ". workloads: " + "; ".join(
            f"{s.name} ({s.description})" + ("" if s.default else " [opt-in]") for s in WORKLOADS.values()),
    )
    parser.add_argument("--quick", action="store_true",
                        help="under a minute on 2 cores: 3 rounds, V and N of the large workloads / 16, "
                             "smaller time budgets for slow peers, one bag workload (bags20)")
    parser.add_argument("--ops", type=_list, default=None,
                        help="comma-separated ops (default: all but the opt-in ones)")
    parser.add_argument("--workloads", type=_list, default=None,
                        help=f"comma-separated workloads (default: {','.join(DEFAULT_WORKLOADS)})")
    parser.add_argument("--threads", type=_threads, default=None,
                        help="comma-separated thread counts, 'all' = every usable core (default: 1,all)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 10, quick 3)")
    parser.add_argument("--peers", type=_list, default=None,
                        help=f"peer libraries to include (default: every installed one of "
                             f"{','.join(peers.PEER_LIBRARIES)})")
    parser.add_argument("--copy-mib", type=int, default=None,
                        help="size of the bandwidth-reference copy in MiB (default 512; needs twice that memory)")
    parser.add_argument("--json", default="bench_results/results.json", help="where to write the JSON results")
    parser.add_argument("--plot", default="bench_results/speedup.png",
                        help="where to draw the PNG chart (needs matplotlib); '' for none")
    parser.add_argument("--in-process", action="store_true",
                        help="run every thread count in this process (jax is then skipped)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        runner.worker_main(*argv[1:4])
        return 0
    args = parse_args(argv)
    try:
        results = runner.run(ops=args.ops, workloads=args.workloads, threads=args.threads, rounds=args.rounds,
                             quick=args.quick, libraries=args.peers, isolate=not args.in_process,
                             progress=not args.no_progress, copy_mib=args.copy_mib)
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    print(report.markdown(results))
    report.write_json(results, args.json)
    print(f"\nJSON: {args.json}")
    if args.plot:
        try:
            report.plot(results, args.plot)
            print(f"Chart: {args.plot}")
        except ImportError:
            print("Chart: skipped (matplotlib is not installed; pip install 'fastembed-kernels[bench]')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
