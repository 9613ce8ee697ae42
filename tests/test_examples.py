"""The examples run, and recover the timings their synthetic inputs were planned with."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "align_synthetic.py"


def load_example():
    return load("align_synthetic")


@pytest.mark.parametrize("text", ["hello world", "aabb", "speech"])
def test_alignment_example_recovers_true_spans(text: str) -> None:
    example = load_example()
    result, _, true_spans = example.align(text, seed=1)
    assert result.ok[0]
    for (start, end), (true_start, true_end) in zip(result.spans[0], true_spans, strict=True):
        # Peaked synthetic frames: the best path finds every character on its own frames.
        assert true_start <= start < end <= true_end


def load(name: str):
    path = EXAMPLE.parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recording_example_recovers_the_planned_words(seed: int) -> None:
    """The synthetic recording's word times are read off its plan; the aligner finds them
    within one frame."""
    example = load("align_recording")
    text = "the quick brown fox jumps over the lazy dog's kennel"
    waveform, words, truth = example.run_synthetic(text, seed)
    assert len(waveform) >= truth[-1][2] * example.SAMPLE_RATE
    assert [w.word for w in words] == text.split()
    frame = 1 / example.FRAME_RATE
    for w, (_, start, end) in zip(words, truth, strict=True):
        assert abs(w.start - start) <= frame + 1e-9 and abs(w.end - end) <= frame + 1e-9
        assert 0.0 <= w.score <= 1.0


def test_recording_example_runs_end_to_end(tmp_path, capsys) -> None:
    """As CI runs it: ``--synthetic``, and ``--plot`` (or its message without matplotlib)."""
    example = load("align_recording")
    png = tmp_path / "words.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="--plot needs matplotlib"):
            example.main(["--synthetic", "--plot", str(png)])
    else:
        assert example.main(["--synthetic", "--plot", str(png)]) == 0
        assert png.read_bytes().startswith(b"\x89PNG")
    out = capsys.readouterr().out
    assert all(word in out for word in "the quick brown fox jumps".split())


def test_recording_example_with_saved_emissions(tmp_path, capsys) -> None:
    """The --emissions route: a WAV file read by the standard library, emissions and tokens
    as ``python -m fastctc align`` takes them; a bad transcript is a message, not a crash."""
    import wave

    import numpy as np

    example = load("align_recording")
    waveform, log_probs, truth = example.synthetic_recording("hello there", seed=3)
    with wave.open(str(tmp_path / "a.wav"), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(example.SAMPLE_RATE)
        file.writeframes((waveform * 32767).astype("<i2").tobytes())
    np.save(tmp_path / "e.npy", log_probs)
    (tmp_path / "tokens.txt").write_text("\n".join(example.SYNTHETIC_TOKENS), encoding="utf-8")
    argv = ["--audio", str(tmp_path / "a.wav"), "--emissions", str(tmp_path / "e.npy")]
    argv += ["--tokens", str(tmp_path / "tokens.txt"), "--frame-rate", "50"]
    assert example.main([*argv, "--word-separator", "|", "--transcript", "hello there"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for line, (word, start, end) in zip(lines, truth, strict=True):
        found = line.split()
        assert found[0] == word
        assert abs(float(found[1]) - start) <= 0.02 + 1e-9
        assert abs(float(found[4]) - end) <= 0.02 + 1e-9
    assert example.main([*argv, "--transcript", "hello thére"]) == 1
    assert "'é' (U+00E9)" in capsys.readouterr().err


def test_ray_corpus_example_aligns_a_manifest(tmp_path) -> None:
    """A local Ray instance (Ray's local mode is gone: 2.60 refuses it), two files; about
    6 s, most of it Ray starting. Ray is not in the test extra: skipped without it."""
    ray = pytest.importorskip("ray")
    if not hasattr(ray, "init"):  # a directory named ray (ray's own /tmp/ray), not the package
        pytest.skip("ray is not installed")
    import json

    import numpy as np
    from test_cli_align import TOKENS, emissions_for, plan_recording

    example = load("align_corpus_ray")
    rng = np.random.default_rng(7)
    (tmp_path / "tokens.txt").write_text("\n".join(TOKENS), encoding="utf-8")
    lines, truths = [], []
    for i, text in enumerate(["a brown fox", "the tooth"]):
        frames, truth = plan_recording(text, rng, separator=True)
        np.save(tmp_path / f"{i}.npy", emissions_for(frames, rng))
        lines.append({"emissions": f"{i}.npy", "transcript": text, "output": f"out/{i}.json"})
        truths.append(truth)
    (tmp_path / "m.jsonl").write_text("\n".join(map(json.dumps, lines)), encoding="utf-8")
    argv = ["--manifest", str(tmp_path / "m.jsonl"), "--tokens", str(tmp_path / "tokens.txt")]
    argv += ["--frame-rate", "50", "--word-separator", "|", "--num-cpus", "1", "--quiet"]
    assert example.main(argv) == 0
    for i, truth in enumerate(truths):
        words = json.loads((tmp_path / f"out/{i}.json").read_text(encoding="utf-8"))["words"]
        assert [w["word"] for w in words] == [w for w, _, _ in truth]
        for w, (_, start, end) in zip(words, truth, strict=True):
            assert abs(w["start"] - start / 50) <= 0.02 + 1e-9
            assert abs(w["end"] - end / 50) <= 0.02 + 1e-9
