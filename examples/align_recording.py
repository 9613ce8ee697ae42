"""Word timings of a recording from a CTC model's emissions, drawn on its waveform.

With a Hugging Face CTC checkpoint (wav2vec2, HuBERT, MMS, ...; ``pip install transformers
torch``), from its name or a local folder::

    python examples/align_recording.py --audio speech.wav --transcript "hello world" \\
        --model facebook/wav2vec2-base-960h --plot words.png

With emissions from any other CTC model: a ``(T, C)`` ``.npy`` of log-probabilities and its
tokens, one a line (the files ``python -m fastctc align`` reads)::

    python examples/align_recording.py --audio speech.wav --emissions E.npy \\
        --tokens tokens.txt --frame-rate 50 --transcript text.txt --plot words.png

Without a model or a recording: a synthetic one (tone bursts for words, emissions that peak
on each token at planned frames), aligned end to end and checked against its plan::

    python examples/align_recording.py --synthetic [--plot words.png]

The plot needs matplotlib (``pip install "fastctc[plot]"``); reading other than 16-bit or
32-bit PCM WAV files needs soundfile.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import wave

import numpy as np
from fastctc.cli_align import AlignedWord, AlignOptions, InputError, align_emissions, load_tokens

SYNTHETIC_TOKENS = ("<pad>", "|", *"abcdefghijklmnopqrstuvwxyz'")
SAMPLE_RATE = 16_000
FRAME_RATE = 50.0  # a 20 ms hop, as wav2vec2's


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """A mono float32 waveform in [-1, 1] and its sample rate (soundfile, else PCM WAV)."""
    try:
        import soundfile
    except ImportError:
        with wave.open(path) as file:
            width, channels = file.getsampwidth(), file.getnchannels()
            if width not in (2, 4):
                raise SystemExit(f"{path}: {8 * width}-bit WAV needs soundfile") from None
            data = np.frombuffer(file.readframes(file.getnframes()), f"<i{width}")
            rate = file.getframerate()
        samples = data.reshape(-1, channels).mean(axis=1) / float(2 ** (8 * width - 1))
        return samples.astype(np.float32), rate
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return samples.mean(axis=1), rate


def model_emissions(samples: np.ndarray, rate: int, model_name: str):
    """(log_probs (T, C), tokens, blank, word separator, frames per second) of a Hugging
    Face CTC checkpoint."""
    try:
        import torch
        from transformers import AutoModelForCTC, AutoProcessor
    except ImportError as error:
        raise SystemExit(f"--model needs transformers and torch ({error})") from None
    processor = AutoProcessor.from_pretrained(model_name)
    model = AutoModelForCTC.from_pretrained(model_name).eval()
    wanted = processor.feature_extractor.sampling_rate
    if rate != wanted:  # a linear resampling: good enough for alignment
        times = np.arange(round(len(samples) * wanted / rate)) / wanted
        samples = np.interp(times, np.arange(len(samples)) / rate, samples).astype(np.float32)
    inputs = processor(samples, sampling_rate=wanted, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**inputs).logits[0]
    log_probs = torch.log_softmax(logits.double(), dim=-1).numpy()
    tokens = [""] * log_probs.shape[1]  # classes without a token stay "" (never matched)
    for token, index in processor.tokenizer.get_vocab().items():
        if index < len(tokens):
            tokens[index] = token
    separator = getattr(processor.tokenizer, "word_delimiter_token", None)
    ratio = getattr(model.config, "inputs_to_logits_ratio", None)
    frame_rate = wanted / ratio if ratio else len(log_probs) * wanted / len(samples)
    blank = processor.tokenizer.pad_token_id
    return log_probs, tokens, blank, separator if separator in tokens else None, frame_rate


def synthetic_recording(text: str, seed: int = 0):
    """(waveform, log_probs (T, C), true [(word, start s, end s)]) of a made-up recording.

    Each word's letters are held for 2-5 frames each (a blank between repeated letters), the
    separator ``|`` for 1-3 frames between words inside 1-3 blank frames; the emissions favour
    each frame's planned class, and the waveform is a tone burst over each word.
    """
    rng = np.random.default_rng(seed)
    frames = [0] * int(rng.integers(3, 10))
    truth = []
    for i, word in enumerate(text.split()):
        if i:
            frames += [0] * int(rng.integers(1, 4)) + [1] * int(rng.integers(1, 4))
            frames += [0] * int(rng.integers(1, 4))
        start = len(frames)
        for j, char in enumerate(word):
            if j and word[j - 1] == char:
                frames.append(0)
            frames += [SYNTHETIC_TOKENS.index(char)] * int(rng.integers(2, 6))
        truth.append((word, start / FRAME_RATE, len(frames) / FRAME_RATE))
    frames += [0] * int(rng.integers(3, 10))
    logits = rng.normal(size=(len(frames), len(SYNTHETIC_TOKENS)))
    logits[np.arange(len(frames)), frames] += 6.0
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    hop = int(SAMPLE_RATE / FRAME_RATE)
    waveform = 0.01 * rng.standard_normal(len(frames) * hop)
    for _, start, end in truth:
        span = slice(int(start * SAMPLE_RATE), int(end * SAMPLE_RATE))
        t = np.arange(span.stop - span.start) / SAMPLE_RATE
        waveform[span] += 0.5 * np.sin(2 * np.pi * rng.uniform(150, 400) * t) * np.hanning(len(t))
    return waveform.astype(np.float32), log_probs, truth


def plot(samples: np.ndarray, rate: int, words: list[AlignedWord], path: str) -> None:
    """The waveform with each word's span shaded and labelled."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'fastctc[plot]'") from None
    fig, ax = plt.subplots(figsize=(12, 3))
    ax.plot(np.arange(len(samples)) / rate, samples, color="0.4", linewidth=0.5)
    top = float(np.abs(samples).max() or 1.0)
    for i, w in enumerate(words):
        ax.axvspan(w.start, w.end, color=f"C{i % 10}", alpha=0.25)
        ax.text((w.start + w.end) / 2, top * 1.05, w.word, ha="center", va="bottom")
    ax.set_ylim(-top * 1.1, top * 1.3)
    ax.set_xlim(0, len(samples) / rate)
    ax.set_xlabel("seconds")
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def run_synthetic(text: str, seed: int = 0):
    """Aligns the synthetic recording of ``text``: (waveform, words found, true words)."""
    waveform, log_probs, truth = synthetic_recording(text, seed)
    options = AlignOptions(SYNTHETIC_TOKENS, FRAME_RATE, blank=0, word_separator="|")
    return waveform, align_emissions(log_probs, text, options), truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", action="store_true", help="a made-up recording")
    parser.add_argument("--text", default="the quick brown fox jumps", help="(--synthetic)")
    parser.add_argument("--seed", type=int, default=0, help="(--synthetic)")
    parser.add_argument("--audio", metavar="FILE.wav")
    parser.add_argument("--transcript", help="the transcript, or a text file holding it")
    parser.add_argument("--model", help="a Hugging Face CTC checkpoint (name or folder)")
    parser.add_argument("--emissions", metavar="E.npy", help="(T, C) log-probabilities")
    parser.add_argument("--tokens", metavar="TOKENS.txt", help="with --emissions")
    parser.add_argument("--frame-rate", type=float, help="with --emissions: frames per second")
    parser.add_argument("--blank", type=int, default=0, help="with --emissions")
    parser.add_argument("--word-separator", help="with --emissions, such as '|'")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the words on the waveform")
    args = parser.parse_args(argv)

    if args.synthetic:
        samples, words, truth = run_synthetic(args.text, args.seed)
        rate = SAMPLE_RATE
    else:
        if not args.audio or not args.transcript or not (args.model or args.emissions):
            parser.error("give --synthetic, or --audio, --transcript and --model or --emissions")
        samples, rate = read_audio(args.audio)
        text = args.transcript
        if pathlib.Path(text).is_file():
            text = pathlib.Path(text).read_text(encoding="utf-8")
        if args.model:
            log_probs, tokens, blank, separator, frame_rate = model_emissions(
                samples, rate, args.model
            )
            if not any(t.islower() for t in tokens):  # an upper-case vocabulary
                text = text.upper()
        else:
            if not args.tokens or not args.frame_rate:
                parser.error("--emissions needs --tokens and --frame-rate")
            log_probs, tokens = np.load(args.emissions), load_tokens(args.tokens)
            blank, separator, frame_rate = args.blank, args.word_separator, args.frame_rate
        try:
            options = AlignOptions(tuple(tokens), frame_rate, blank, separator)
            words, truth = align_emissions(log_probs, text, options), None
        except InputError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    for i, w in enumerate(words):
        line = f"{w.word:>15}  {w.start:7.2f} s - {w.end:7.2f} s   score {w.score:.2f}"
        if truth is not None:
            line += f"   (planned {truth[i][1]:.2f} - {truth[i][2]:.2f})"
        print(line)
    if args.plot:
        plot(samples, rate, words, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
