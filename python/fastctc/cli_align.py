"""``python -m fastctc align``: word timings of recordings from their CTC emissions.

One recording::

    python -m fastctc align --emissions E.npy --tokens tokens.txt --transcript text.txt \\
        --frame-rate 50 [--blank N] [--word-separator TOKEN] [--format json|ctm|textgrid] \\
        [--output FILE]

or a corpus, one recording a line of a JSON-lines manifest, aligned in parallel::

    python -m fastctc align --manifest corpus.jsonl --tokens tokens.txt --frame-rate 50

The pieces are public so that other schedulers can run the same per-file job:
:func:`read_manifest` gives the :class:`Job` list, :func:`align_job` runs one (it never
raises for bad input: its :class:`JobResult` says what went wrong), and
:func:`align_emissions` aligns arrays already in memory (``examples/align_corpus_ray.py`` and
``examples/align_recording.py`` use them).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastctc._core import CTCInputError, CTCTypeError
from fastctc._progress import Progress
from fastctc.formats import FORMATS, AlignedWord, format_for, write
from fastctc.transcripts import (
    AlignOptions,
    InputError,
    PathLike,
    load_tokens,
    read_text,
    tokenize,
)
from fastctc.words import align_words

__all__ = [
    "AlignOptions",
    "AlignedWord",
    "InputError",
    "Job",
    "JobResult",
    "align_emissions",
    "align_file",
    "align_job",
    "check_emissions",
    "load_emissions",
    "load_tokens",
    "read_manifest",
    "tokenize",
    "add_arguments",
    "run",
]


def _check_distributions(emissions: np.ndarray, source: str) -> None:
    """Each frame must be a log-probability distribution, so word scores lie in [0, 1]."""
    block = max(1, (1 << 22) // max(1, emissions.shape[1]))
    for first in range(0, emissions.shape[0], block):
        rows = np.asarray(emissions[first : first + block], dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            top = rows.max(axis=1, keepdims=True)
            total = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
        bad = np.flatnonzero(~(np.abs(total) <= 1e-2))
        if bad.size:
            t = first + int(bad[0])
            if np.isnan(rows[bad[0]]).any():
                raise InputError(f"{source}: frame {t} holds NaN")
            raise InputError(
                f"{source}: frame {t} is not a log-probability distribution (its "
                f"log-sum-exp is {total[bad[0]]:.4g}, not 0); pass --logits for raw model outputs"
            )


def load_emissions(path: PathLike, options: AlignOptions) -> np.ndarray:
    """A ``(T, C)`` ``.npy`` file of log-probabilities, memory-mapped, checked against the tokens.

    Raises
    ------
    InputError
        A missing or unreadable file, not a ``.npy`` array, not 2-D, not floating point, a
        class count other than the tokens', or (without ``logits``) a frame that is not a
        log-probability distribution.
    """
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such emissions file") from None
    except (ValueError, OSError) as error:
        raise InputError(f"{path}: not a NumPy .npy array ({error})") from None
    if not isinstance(array, np.ndarray):
        raise InputError(f"{path}: expected one .npy array, got a .npz archive")
    return check_emissions(array, options, str(path))


def check_emissions(array: Any, options: AlignOptions, source: str = "emissions") -> np.ndarray:
    """``array`` as float32 or float64 ``(T, C)`` emissions; raises :class:`InputError`."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise InputError(
            f"{source}: expected (T, C) log-probabilities (frames x classes), got shape "
            f"{array.shape}"
        )
    if array.dtype.kind != "f":
        raise InputError(f"{source}: expected floating-point log-probabilities, got {array.dtype}")
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32)
    if array.shape[1] != len(options.tokens):
        raise InputError(
            f"{source}: has {array.shape[1]} classes but the tokens name {len(options.tokens)} "
            "(one token per class expected)"
        )
    if not options.logits:
        _check_distributions(array, source)
    return array


def align_emissions(
    emissions: Any, text: str, options: AlignOptions, source: str = "transcript"
) -> list[AlignedWord]:
    """The words of ``text`` with their times on ``(T, C)`` emissions.

    Parameters
    ----------
    emissions : array_like, shape (T, C)
        Log-probabilities (or logits with ``options.logits``), checked by
        :func:`check_emissions`.
    text : str
        The transcript; see :func:`tokenize`.
    options : AlignOptions
    source : str
        The transcript's name in error messages.

    Returns
    -------
    list of AlignedWord

    Raises
    ------
    InputError
        Bad emissions or transcript, or no alignment (more tokens than frames allow).
    """
    words, ids = tokenize(text, options, source)
    return _align_tokens(check_emissions(emissions, options), words, ids, options, source)


def _align_tokens(
    array: np.ndarray, words: list, ids: list, options: AlignOptions, source: str
) -> list[AlignedWord]:
    try:
        spans = align_words(
            array,
            ids,
            options.frame_rate,
            blank=options.blank,
            separator=options.separator_id,
            input_kind="logits" if options.logits else "log_probs",
        )
    except (CTCInputError, CTCTypeError) as error:
        raise InputError(f"{source}: {error}") from None
    return [
        AlignedWord(word, s.start_time, s.end_time, min(1.0, s.confidence))
        for word, s in zip(words, spans, strict=True)
    ]


def align_file(
    emissions: PathLike,
    transcript: PathLike,
    output: PathLike | None,
    options: AlignOptions,
    *,
    text: str | None = None,
) -> tuple[list[AlignedWord], str]:
    """Aligns one recording: ``emissions`` (``.npy``) and its ``transcript`` (a text file).

    Parameters
    ----------
    emissions : path
        A ``(T, C)`` ``.npy`` file; its stem names the utterance in CTM output.
    transcript : path
        A UTF-8 text file (ignored when ``text`` is given).
    output : path, optional
        Where to write the words (parent folders are made); nothing is written when None.
    options : AlignOptions
    text : str, optional
        The transcript itself, instead of a file.

    Returns
    -------
    words : list of AlignedWord
    rendered : str
        The words in the output format (``options.format``, else ``output``'s suffix, else
        JSON).

    Raises
    ------
    InputError
        Anything wrong with the inputs, or an output that cannot be written.
    """
    if text is None:
        text = read_text(transcript, "transcript")
    names, ids = tokenize(text, options, str(transcript))
    array = load_emissions(emissions, options)
    words = _align_tokens(array, names, ids, options, str(transcript))
    fmt = format_for(output, options.format)
    duration = array.shape[0] / options.frame_rate
    rendered = write(words, fmt, pathlib.Path(emissions).stem, duration)
    if output is not None:
        try:
            pathlib.Path(output).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(output).write_text(rendered, encoding="utf-8")
        except OSError as error:
            raise InputError(f"{output}: cannot write the output ({error.strerror})") from None
    return words, rendered


@dataclass(frozen=True)
class Job:
    """One recording of a manifest: its emissions, its transcript and where its words go.

    ``transcript`` is a file when ``text`` is None, else ``text`` is the transcript (and
    ``transcript`` names it in messages). Without ``output`` the words are kept in
    :attr:`JobResult.rendered` instead. ``line`` is its line in the manifest (from 1).
    """

    emissions: str
    transcript: str
    output: str | None
    text: str | None = None
    line: int = 0


@dataclass(frozen=True)
class JobResult:
    """What :func:`align_job` did: ``error`` is None on success, else the message.

    ``words`` counts the aligned words; ``rendered`` is the output's text when the job has no
    output file.
    """

    job: Job
    words: int = 0
    error: str | None = None
    rendered: str | None = None


def align_job(job: Job, options: AlignOptions) -> JobResult:
    """Aligns one :class:`Job` and writes its output; bad input becomes ``JobResult.error``.

    The per-file job of ``python -m fastctc align``, run on a thread pool there and as a Ray
    task in ``examples/align_corpus_ray.py``: everything it needs is in its (picklable)
    arguments.
    """
    try:
        words, rendered = align_file(
            job.emissions, job.transcript, job.output, options, text=job.text
        )
    except InputError as error:
        return JobResult(job, error=str(error))
    return JobResult(job, len(words), rendered=None if job.output else rendered)


def read_manifest(path: PathLike) -> list[Job]:
    """The jobs of a JSON-lines manifest: ``{"emissions", "transcript", "output"}`` a line.

    Relative paths are taken from the manifest's folder (the jobs hold absolute paths).
    ``transcript`` is a file when such a file exists, else the transcript's text. Blank lines
    are skipped.

    Raises
    ------
    InputError
        A line that is not a JSON object with those three strings, naming the line.
    """
    base = pathlib.Path(path).absolute().parent  # absolute: other processes may run the jobs
    jobs = []
    for number, line in enumerate(read_text(path, "manifest").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{where}: not JSON ({error.msg})") from None
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        for key in ("emissions", "transcript", "output"):
            if not isinstance(entry.get(key), str):
                raise InputError(f"{where}: expected a string {key!r}")
        transcript = base / entry["transcript"]
        is_file = transcript.is_file()
        jobs.append(
            Job(
                str(base / entry["emissions"]),
                str(transcript) if is_file else f"{path}:{number}",
                str(base / entry["output"]),
                text=None if is_file else entry["transcript"],
                line=number,
            )
        )
    if not jobs:
        raise InputError(f"{path}: no recordings")
    return jobs


DESCRIPTION = """\
Word timings of a recording from its CTC emissions (a model's per-frame outputs).

inputs:
  E.npy        (T, C) log-probabilities, frames x classes (--logits: raw outputs)
  tokens.txt   one token a line, line i is class i; the blank is class 0 unless --blank
  transcript   UTF-8 text, split into words on whitespace and each word into tokens,
               those of several characters (<unk>, BPE pieces) matched longest first

outputs (seconds; scores are mean token-frame probabilities in [0, 1]):
  json         {"words": [{"word", "start", "end", "score"}, ...]}
  ctm          <utterance> 1 <start> <duration> <word> <score>, utterance = E.npy's stem
  textgrid     Praat TextGrid (long text), tier "words", empty intervals between words

A recording whose transcript cannot be aligned (a character no token spells, too few
frames, bad files) exits with status 1 and a message; with --manifest the other recordings
are still aligned. Progress goes to stderr when it is a terminal (tqdm if installed).

examples:
  python -m fastctc align --emissions utt1.npy --tokens tokens.txt \\
      --transcript utt1.txt --frame-rate 50 --word-separator '|' --format ctm
  python -m fastctc align --manifest corpus.jsonl --tokens tokens.txt --frame-rate 50
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``align`` subcommand's options."""
    one = parser.add_argument_group("one recording")
    one.add_argument("--emissions", metavar="E.npy", help="(T, C) log-probabilities (.npy)")
    one.add_argument("--transcript", metavar="TEXT.txt", help="its transcript (UTF-8 text)")
    one.add_argument("--output", metavar="FILE", help="where to write (default: standard output)")
    many = parser.add_argument_group("many recordings")
    many.add_argument(
        "--manifest",
        metavar="FILE.jsonl",
        help='one recording a line: {"emissions": path, "transcript": path or text, '
        '"output": path}; relative paths from the manifest\'s folder',
    )
    many.add_argument(
        "--jobs", type=int, default=None, metavar="N", help="recordings at once (default: cores)"
    )
    add_option_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every recording is aligned with (read back by :func:`options_from_args`):
    shared by ``python -m fastctc align`` and ``examples/align_corpus_ray.py``."""
    parser.add_argument(
        "--tokens", required=True, metavar="TOKENS.txt", help="one token a line; line i is class i"
    )
    parser.add_argument(
        "--frame-rate", type=float, required=True, metavar="HZ", help="frames per second"
    )
    parser.add_argument("--blank", type=int, default=0, metavar="N", help="the blank's class (0)")
    parser.add_argument(
        "--word-separator", metavar="TOKEN", help="a token between words, such as '|'"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="json (default), ctm or textgrid; by default the output's suffix decides",
    )
    parser.add_argument(
        "--logits", action="store_true", help="the emissions are logits: log-softmax them first"
    )


def options_from_args(args: argparse.Namespace) -> AlignOptions:
    """The :class:`AlignOptions` of parsed :func:`add_option_arguments`; raises
    :class:`InputError` for an unreadable tokens file."""
    return AlignOptions(
        load_tokens(args.tokens),
        args.frame_rate,
        args.blank,
        args.word_separator,
        args.format,
        args.logits,
    )


def _error(message: str) -> None:
    print(f"python -m fastctc align: error: {message}", file=sys.stderr)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _run_jobs(
    jobs: list[Job], options: AlignOptions, workers: int, progress: Progress
) -> list[JobResult]:
    """Every job on a thread pool (the aligner releases the GIL), in the jobs' order."""
    results: list[Any] = [None] * len(jobs)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs))))
    try:
        futures = {pool.submit(align_job, job, options): i for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(
                pending, timeout=0.25, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                result = results[futures[future]] = future.result()
                progress.describe(pathlib.Path(result.job.emissions).name)
                progress.advance()
            progress.tick()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results


def run(args: argparse.Namespace) -> int:
    """Runs ``python -m fastctc align``; returns the exit status (1: bad input, 2: bad usage)."""
    if args.manifest is not None:
        stray = [f"--{n}" for n in ("emissions", "transcript", "output") if getattr(args, n)]
        if stray:
            _error(f"{', '.join(stray)}: not with --manifest (each line names its files)")
            return 2
    elif args.emissions is None or args.transcript is None:
        _error("give --emissions and --transcript, or --manifest")
        return 2
    if args.jobs is not None and args.jobs < 1:
        _error(f"--jobs: expected at least 1, got {args.jobs}")
        return 2
    try:
        options = options_from_args(args)
        if args.manifest is not None:
            jobs = read_manifest(args.manifest)
        else:
            jobs = [Job(args.emissions, args.transcript, args.output)]
    except InputError as error:
        _error(str(error))
        return 1
    progress = Progress(len(jobs), "file", enabled=not args.quiet)
    progress.describe(pathlib.Path(jobs[0].emissions).name)
    try:
        results = _run_jobs(jobs, options, args.jobs or _cores(), progress)
    except KeyboardInterrupt:
        progress.close()
        _error("interrupted")
        return 130
    progress.close()
    failed = [r for r in results if r.error is not None]
    for result in failed:
        where = f"{args.manifest}, line {result.job.line}: " if args.manifest else ""
        _error(where + str(result.error))
    if args.manifest is None:
        if not failed and results[0].rendered is not None:
            sys.stdout.write(results[0].rendered)
    elif not args.quiet:
        words = sum(r.words for r in results)
        print(
            f"aligned {len(results) - len(failed)} of {len(results)} recordings "
            f"({words} words)" + (f"; {len(failed)} failed" if failed else ""),
            file=sys.stderr,
        )
    return 1 if failed else 0
