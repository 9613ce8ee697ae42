"""Word timings of a corpus on a Ray cluster, one Ray task per recording.

``python -m fastctc align --manifest`` aligns a corpus on one machine's cores. Past that, the
same per-file job, ``fastctc.cli_align.align_job``, runs as a Ray task: Ray places the tasks
on the cluster's nodes, retries those of a lost node, and this script only submits them and
reports what came back. It takes the CLI's arguments::

    pip install ray
    python examples/align_corpus_ray.py --manifest corpus.jsonl --tokens tokens.txt \\
        --frame-rate 50 --word-separator "|"                 # a local Ray instance
    python examples/align_corpus_ray.py --address auto ...   # a running cluster (ray start)

The manifest's paths (relative ones are taken from the manifest's folder, made absolute
here) must name the same files on every node: a shared file system, as a cluster's corpus
usually lives on. Each node needs fastctc installed (or a Ray ``runtime_env`` that installs
it).
"""

from __future__ import annotations

import argparse
import sys
import time

from fastctc.cli_align import (
    AlignOptions,
    InputError,
    JobResult,
    add_option_arguments,
    align_job,
    options_from_args,
    read_manifest,
)


def align_corpus(
    manifest: str,
    options: AlignOptions,
    address: str | None = None,
    num_cpus: int | None = None,
    quiet: bool = False,
) -> list[JobResult]:
    """Aligns every recording of ``manifest`` as a Ray task; returns their results in order.

    ``address`` is a running cluster's (``"auto"``: the one ``ray start`` made here); without
    it a local Ray instance with ``num_cpus`` cores (all by default) is started and stopped.
    """
    import ray  # an optional dependency: pip install ray

    jobs = read_manifest(manifest)
    started = not ray.is_initialized()
    if started:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING")
        else:
            ray.init(address=address, logging_level="WARNING")
    try:
        task = ray.remote(num_cpus=1)(align_job)
        shared = ray.put(options)  # sent once, not with every task
        refs = [task.remote(job, shared) for job in jobs]
        pending, done, start = list(refs), 0, time.monotonic()
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            done += len(ready)
            if not quiet and sys.stderr.isatty():
                elapsed = time.monotonic() - start
                print(f"\r{done}/{len(jobs)} files, {elapsed:.0f} s", end="", file=sys.stderr)
        if not quiet and sys.stderr.isatty():
            print(file=sys.stderr)
        return ray.get(refs)
    finally:
        if started:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, metavar="FILE.jsonl")
    add_option_arguments(parser)
    parser.add_argument("--address", help="a running Ray cluster ('auto'); default: start one")
    parser.add_argument("--num-cpus", type=int, help="cores of a local Ray instance")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
        results = align_corpus(args.manifest, options, args.address, args.num_cpus, args.quiet)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    failed = [r for r in results if r.error is not None]
    for result in failed:
        print(f"error: {args.manifest}, line {result.job.line}: {result.error}", file=sys.stderr)
    words = sum(r.words for r in results)
    print(f"aligned {len(results) - len(failed)} of {len(results)} recordings ({words} words)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
