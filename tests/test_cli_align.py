"""``python -m fastctc align``: word timings of synthetic recordings whose timings are known.

Each recording is built frame by frame from a plan (blank frames, then each token held for a
few frames, a separator or silence between words), and its emissions peak on the planned
class at every frame. The true word times are read off the plan, never off the aligner.
"""

from __future__ import annotations

import io
import itertools
import json
import pathlib
import re
import subprocess
import sys

import fastctc.__main__
import numpy as np
import pytest
from fastctc import cli_align, formats
from fastctc._progress import Progress

RATE = 50.0
FRAME = 1 / RATE
TOKENS = ["<blank>", "|"] + list("abcdefghijklmnopqrstuvwxyz'") + ["<unk>", "th"]


def plan_recording(text: str, rng: np.random.Generator, separator: bool):
    """(frame classes, true word spans in frames) for ``text``; ``th`` and ``<unk>`` are one
    token each (the longest match), every other character its own token."""
    frames = [0] * int(rng.integers(1, 6))
    truth = []
    for i, word in enumerate(text.split()):
        if i:
            frames += [0] * int(rng.integers(0, 3))
            if separator:
                frames += [1] * int(rng.integers(1, 4))
            frames += [0] * int(rng.integers(1, 3))
        pieces = re.findall(r"<unk>|th|.", word)
        start = len(frames)
        previous = None
        for piece in pieces:
            token = TOKENS.index(piece)
            if token == previous:
                frames.append(0)  # a repeated token needs a blank between its copies
            frames += [token] * int(rng.integers(1, 5))
            previous = token
        truth.append((word, start, len(frames)))
    frames += [0] * int(rng.integers(1, 6))
    return frames, truth


def emissions_for(frames: list[int], rng: np.random.Generator) -> np.ndarray:
    logits = rng.normal(size=(len(frames), len(TOKENS)))
    logits[np.arange(len(frames)), frames] += 7.0
    return (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)


@pytest.fixture
def recording(tmp_path, rng):
    """Writes tokens.txt, utt.npy and utt.txt; returns (folder, true words, frame count)."""
    text = "the quick <unk> brown fox's tooth"
    frames, truth = plan_recording(text, rng, separator=True)
    (tmp_path / "tokens.txt").write_text("\n".join(TOKENS) + "\n", encoding="utf-8")
    np.save(tmp_path / "utt.npy", emissions_for(frames, rng))
    (tmp_path / "utt.txt").write_text(text + "\n", encoding="utf-8")
    return tmp_path, truth, len(frames)


def align(folder: pathlib.Path, *extra: str, transcript: str = "utt.txt") -> list[str]:
    return [
        "align",
        "--emissions",
        str(folder / "utt.npy"),
        "--tokens",
        str(folder / "tokens.txt"),
        "--transcript",
        str(folder / transcript),
        "--frame-rate",
        str(RATE),
        *extra,
    ]


def assert_words_match(found: list[tuple[str, float, float]], truth) -> None:
    assert [w for w, _, _ in found] == [w for w, _, _ in truth]
    for (_, start, end), (_, true_start, true_end) in zip(found, truth, strict=True):
        assert abs(start - true_start / RATE) <= FRAME + 1e-9
        assert abs(end - true_end / RATE) <= FRAME + 1e-9


def test_json_recovers_the_planned_word_times(recording, capsys) -> None:
    folder, truth, _ = recording
    assert fastctc.__main__.main(align(folder, "--word-separator", "|")) == 0
    words = json.loads(capsys.readouterr().out)["words"]
    assert_words_match([(w["word"], w["start"], w["end"]) for w in words], truth)
    assert all(set(w) == {"word", "start", "end", "score"} for w in words)
    assert all(0.5 < w["score"] <= 1.0 for w in words)  # peaked frames: confident words


def test_ctm_to_a_file(recording) -> None:
    folder, truth, _ = recording
    out = folder / "out" / "utt.ctm"
    argv = align(folder, "--word-separator", "|", "--output", str(out))  # CTM by its suffix
    assert fastctc.__main__.main(argv) == 0
    rows = [line.split() for line in out.read_text(encoding="utf-8").splitlines()]
    assert {(r[0], r[1]) for r in rows} == {("utt", "1")}
    found = [(r[4], float(r[2]), float(r[2]) + float(r[3])) for r in rows]
    assert_words_match(found, truth)
    assert all(0.0 <= float(r[5]) <= 1.0 for r in rows)


def parse_textgrid(text: str):
    """(tier xmax, [(xmin, xmax, text)]) of a one-tier long-format TextGrid, read by regex."""
    assert text.startswith('File type = "ooTextFile"\nObject class = "TextGrid"\n')
    assert re.search(r'class = "IntervalTier"\s*\n\s*name = "words"', text)
    size = int(re.search(r"intervals: size = (\d+)", text).group(1))
    intervals = [
        (float(a), float(b), t.replace('""', '"'))
        for a, b, t in re.findall(
            r'intervals \[\d+\]:\s*xmin = (\S+)\s*xmax = (\S+)\s*text = "((?:[^"]|"")*)"', text
        )
    ]
    assert len(intervals) == size
    return float(re.search(r"^xmax = (\S+)", text, re.M).group(1)), intervals


def test_textgrid_names_every_word_and_covers_the_recording(recording, capsys) -> None:
    folder, truth, frames = recording
    argv = align(folder, "--word-separator", "|", "--format", "textgrid", "--quiet")
    assert fastctc.__main__.main(argv) == 0
    xmax, intervals = parse_textgrid(capsys.readouterr().out)
    assert xmax == pytest.approx(frames / RATE)
    assert intervals[0][0] == 0 and intervals[-1][1] == pytest.approx(xmax)
    for (_, end, _), (start, _, _) in itertools.pairwise(intervals):
        assert start == end  # contiguous
    named = [(t, a, b) for a, b, t in intervals if t]
    assert_words_match(named, truth)
    assert all(t == "" for a, b, t in intervals if (t, a, b) not in named)


def test_logits_flag_and_repeated_letters(tmp_path, rng, capsys) -> None:
    """Raw outputs (log-probs shifted per frame) align with --logits exactly as the
    log-probabilities do; "letter" and "book" need blanks between their repeated letters."""
    text = "a letter book"
    frames, truth = plan_recording(text, rng, separator=False)
    (tmp_path / "tokens.txt").write_text("\n".join(TOKENS) + "\n", encoding="utf-8")
    lp = emissions_for(frames, rng)
    np.save(tmp_path / "utt.npy", lp + rng.normal(size=(len(lp), 1)).astype(np.float32) * 3)
    (tmp_path / "utt.txt").write_text(text, encoding="utf-8")
    assert fastctc.__main__.main(align(tmp_path, "--logits")) == 0
    words = json.loads(capsys.readouterr().out)["words"]
    assert_words_match([(w["word"], w["start"], w["end"]) for w in words], truth)


def test_blank_elsewhere_and_an_empty_transcript(tmp_path, rng, capsys) -> None:
    """--blank moves the blank to the last class; no words gives an empty list."""
    frames, truth = plan_recording("fox", rng, separator=False)
    last = len(TOKENS) - 1
    moved = [last if f == 0 else (0 if f == last else f) for f in frames]
    tokens = list(TOKENS)
    tokens[0], tokens[last] = tokens[last], tokens[0]
    (tmp_path / "tokens.txt").write_text("\n".join(tokens), encoding="utf-8")  # no final \n
    np.save(tmp_path / "utt.npy", emissions_for(moved, rng))
    (tmp_path / "utt.txt").write_text("fox", encoding="utf-8")
    (tmp_path / "empty.txt").write_text(" \n", encoding="utf-8")
    assert fastctc.__main__.main(align(tmp_path, "--blank", str(last))) == 0
    words = json.loads(capsys.readouterr().out)["words"]
    assert_words_match([(w["word"], w["start"], w["end"]) for w in words], truth)
    assert fastctc.__main__.main(align(tmp_path, "--blank", str(last), transcript="empty.txt")) == 0
    assert json.loads(capsys.readouterr().out) == {"words": []}


def test_unknown_character_exits_with_a_message_naming_it(recording) -> None:
    """Run as a user would: a separate process, its exit status and stderr."""
    folder, _, _ = recording
    (folder / "bad.txt").write_text("the naïve fox\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "fastctc", *align(folder, transcript="bad.txt")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "'ï' (U+00EF)" in done.stderr and "'naïve'" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def write_npy(path: pathlib.Path, array) -> None:
    np.save(path, np.asarray(array))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"transcript": "THE FOX"}, "'T' (U+0054) of the word 'THE' is not in the tokens (the "),
        (
            {"transcript": "a<blank>b"},
            "'<' (U+003C) of the word 'a<blank>b' is not in the tokens ('<blank>' is the blank)",
        ),
        ({"transcript": None}, "no such transcript file"),
        ({"transcript": b"\xff\xfe"}, "not UTF-8 text"),
        ({"emissions": None}, "no such emissions file"),
        ({"emissions": b"not an array"}, "not a NumPy .npy array"),
        ({"emissions": "npz"}, "expected one .npy array, got a .npz archive"),
        ({"emissions": np.zeros((3, 4, len(TOKENS)))}, "expected (T, C) log-probabilities"),
        ({"emissions": np.zeros((30, len(TOKENS)), dtype=np.int32)}, "got int32"),
        ({"emissions": np.zeros((30, 5))}, "has 5 classes but the tokens name 31"),
        ({"emissions": np.zeros((30, len(TOKENS)))}, "frame 0 is not a log-probability"),
        ({"emissions": np.full((30, len(TOKENS)), np.nan)}, "frame 0 holds NaN"),
        ({"emissions": np.log(np.full((4, len(TOKENS)), 1 / len(TOKENS)))}, "no alignment"),
        ({"tokens": None}, "no such tokens file"),
        ({"tokens": ""}, "no tokens"),
        ({"tokens": "\n".join(TOKENS + ["a"])}, "'a' is both class 2 and class 31"),
        ({"args": ["--word-separator", "#"]}, "--word-separator: '#' is not one of the tokens"),
        ({"args": ["--word-separator", "<blank>"]}, "(it is the blank)"),
        ({"args": ["--blank", "31"]}, "--blank: class 31 is not in the tokens"),
        ({"args": ["--frame-rate", "0"]}, "--frame-rate: expected frames per second > 0"),
        ({"args": ["--output", "/dev/null/x.json"]}, "cannot write the output"),
    ],
)
def test_bad_input_exits_1_with_a_message(recording, capsys, change, message) -> None:
    folder, _, _ = recording
    if "transcript" in change:
        value = change["transcript"]
        path = folder / "utt.txt"
        path.unlink()
        if isinstance(value, bytes):
            path.write_bytes(value)
        elif value is not None:
            path.write_text(value, encoding="utf-8")
    if "emissions" in change:
        value = change["emissions"]
        (folder / "utt.npy").unlink()
        if isinstance(value, bytes):
            (folder / "utt.npy").write_bytes(value)
        elif isinstance(value, str):
            with open(folder / "utt.npy", "wb") as file:
                np.savez(file, a=np.zeros(3))
        elif value is not None:
            write_npy(folder / "utt.npy", value)
    if "tokens" in change:
        (folder / "tokens.txt").unlink()
        if change["tokens"] is not None:
            (folder / "tokens.txt").write_text(change["tokens"], encoding="utf-8")
    assert fastctc.__main__.main(align(folder, *change.get("args", []))) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m fastctc align: error: ") and message in err, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--manifest", "m.jsonl", "--output", "x"], "--output: not with --manifest"),
        ([], "give --emissions and --transcript, or --manifest"),
        (["--emissions", "e.npy", "--transcript", "t.txt", "--jobs", "0"], "--jobs: expected"),
    ],
)
def test_bad_usage_exits_2(capsys, args, message) -> None:
    argv = ["align", "--tokens", "t.txt", "--frame-rate", "50", *args]
    assert fastctc.__main__.main(argv) == 2
    assert message in capsys.readouterr().err


def test_manifest_aligns_two_files_in_parallel(recording, rng, capsys) -> None:
    """One transcript a file, one given inline; float16 emissions; outputs in folders that do
    not exist yet, their formats read from their suffixes."""
    folder, truth, _ = recording
    text = "brown th'"
    frames, truth2 = plan_recording(text, rng, separator=True)
    np.save(folder / "second.npy", emissions_for(frames, rng).astype(np.float16))  # read as f32
    lines = [
        {"emissions": "utt.npy", "transcript": "utt.txt", "output": "out/utt.json"},
        {"emissions": "second.npy", "transcript": text, "output": "out/b/second.TextGrid"},
    ]
    manifest = folder / "corpus.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    argv = ["align", "--manifest", str(manifest), "--tokens", str(folder / "tokens.txt")]
    argv += ["--frame-rate", "50", "--word-separator", "|", "--jobs", "2"]
    assert fastctc.__main__.main(argv) == 0
    assert "aligned 2 of 2 recordings (8 words)" in capsys.readouterr().err
    words = json.loads((folder / "out/utt.json").read_text(encoding="utf-8"))["words"]
    assert_words_match([(w["word"], w["start"], w["end"]) for w in words], truth)
    _, intervals = parse_textgrid((folder / "out/b/second.TextGrid").read_text(encoding="utf-8"))
    assert_words_match([(t, a, b) for a, b, t in intervals if t], truth2)


def test_manifest_goes_on_past_a_bad_recording(recording, capsys) -> None:
    folder, truth, _ = recording
    lines = [
        {"emissions": "missing.npy", "transcript": "x", "output": "a.json"},
        {"emissions": "utt.npy", "transcript": "utt.txt", "output": "b.json"},
    ]
    manifest = folder / "corpus.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    argv = ["align", "--manifest", str(manifest), "--tokens", str(folder / "tokens.txt")]
    assert fastctc.__main__.main([*argv, "--frame-rate", "50"]) == 1
    err = capsys.readouterr().err
    assert "corpus.jsonl, line 1: " in err and "missing.npy: no such emissions file" in err
    assert "aligned 1 of 2 recordings" in err and "1 failed" in err
    words = json.loads((folder / "b.json").read_text(encoding="utf-8"))["words"]
    assert [w["word"] for w in words] == [w for w, _, _ in truth]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"emissions": "a.npy"', "line 1: not JSON"),
        ("[1, 2]", "line 1: expected a JSON object, got list"),
        ('\n{"emissions": "a.npy", "transcript": "t"}', "line 2: expected a string 'output'"),
        ("\n\n", "no recordings"),
        (None, "no such manifest file"),
    ],
)
def test_bad_manifest_exits_1_naming_the_line(tmp_path, capsys, content, message) -> None:
    (tmp_path / "tokens.txt").write_text("\n".join(TOKENS), encoding="utf-8")
    if content is not None:
        (tmp_path / "m.jsonl").write_text(content, encoding="utf-8")
    argv = ["align", "--manifest", str(tmp_path / "m.jsonl"), "--tokens"]
    assert fastctc.__main__.main([*argv, str(tmp_path / "tokens.txt"), "--frame-rate", "50"]) == 1
    assert message in capsys.readouterr().err


def brute_force_longest_first(word: str, vocab: set[str]):
    """Every way to spell ``word`` with ``vocab``; the one whose piece lengths are
    lexicographically largest (the longest first piece, then the longest second, ...)."""
    spellings = []
    for cuts in itertools.product([False, True], repeat=max(0, len(word) - 1)):
        pieces, start = [], 0
        for i, cut in enumerate(cuts, 1):
            if cut:
                pieces.append(word[start:i])
                start = i
        pieces.append(word[start:])
        if all(p in vocab for p in pieces):
            spellings.append(pieces)
    return max(spellings, key=lambda p: [len(x) for x in p], default=None)


def test_tokenize_matches_brute_force_longest_first(rng) -> None:
    for _ in range(300):
        vocab = {"".join(rng.choice(list("abc"), size=n)) for n in rng.integers(1, 4, size=6)}
        word = "".join(rng.choice(list("abc"), size=int(rng.integers(1, 8))))
        options = cli_align.AlignOptions(("-", *sorted(vocab)), frame_rate=50)
        expected = brute_force_longest_first(word, vocab)
        if expected is None:
            with pytest.raises(cli_align.InputError, match="is not in the tokens"):
                cli_align.tokenize(word, options)
        else:
            _, ids = cli_align.tokenize(word, options)
            assert [options.tokens[i] for i in ids[0]] == expected


def test_progress_counter_without_tqdm(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = Progress(2, "file", enabled=True, stream=stream, delay=0.0)
    progress.describe("a.npy")
    progress.advance()
    assert "1/2 files" in stream.getvalue() and "(a.npy)" in stream.getvalue()
    progress.close()
    assert stream.getvalue().endswith("\r")
    for quiet in (
        Progress(2, "file", enabled=False, stream=Terminal(), delay=0.0),
        Progress(2, "file", enabled=True, stream=io.StringIO(), delay=0.0),
    ):
        quiet.advance()
        quiet.close()
        assert quiet.stream.getvalue() == ""


def test_formats_reject_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="format: expected one of json, ctm, textgrid"):
        formats.write([], "srt", "utt", 1.0)
