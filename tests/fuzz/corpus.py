"""Seeded input generation for the fuzz tier: byte-level mutations of real files.

Every generator takes a ``random.Random`` seeded by the test, so a run is the same inputs every
time (a failure names its case number and reproduces); :func:`bounded` turns a hang into a
failure of that case.
"""

from __future__ import annotations

import contextlib
import random
import signal
from collections.abc import Iterator, Sequence
from types import FrameType

SEED = 11  # issue 11; change it to explore, never to make a failure go away

COMMON = [
    b"\n",
    b"\r\n",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xe2\x80\xa8",  # U+2028
    b"\\",
    b"#",
    b" " * 3000,
    b"\t",
    b"9" * 40,
    b"-1",
    b"0",
]

TOML_TOKENS = [
    *COMMON,
    b"nan",
    b"+nan",
    b"-inf",
    b"inf",
    b"1e309",
    b"[",
    b"]",
    b"{",
    b"}",
    b'"""',
    b"'''",
    b'"',
    b"'",
    b"=",
    b".",
    b",",
    b"[[policy]]\n",
    b"[device]\n",
    b"[policy.verify]\n",
    b"type = 'inject'\n",
    b"delay_ms = ",
    b"wait_ms = nan",
    b"reports = [",
    b"{wait_ms = 1}",
    b"0x",
    b"true",
    b"1979-05-27T07:32:00Z",
    b"[" * 40,
    b"{a=" * 30,
    b"a." * 40,
    b"[\n" * 20,
]

CAPTURE_TOKENS = [
    *COMMON,
    b"D: ",
    b"E: ",
    b"I: ",
    b"R: ",
    b"N: ",
    b"4294967296",
    b"65536",
    b"ff",
    b"zz",
    b"0x1",
    b"1e5",
    b".",
    b"E: 0.000000 4 01 00 68 00\n",
    b"D: 1\n",
    b"I: 3 1209 a001\n",
    b"R: 2 05 01\n",
    b" 01" * 200,
]


def mutate(rng: random.Random, data: bytes, tokens: Sequence[bytes]) -> bytes:
    """1-8 random edits of ``data``: insert a token or random bytes, delete or duplicate a
    span, flip a byte."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        pos = rng.randint(0, len(buf))
        op = rng.randrange(6)
        if op <= 1:
            buf[pos:pos] = rng.choice(tokens)
        elif op == 2 and buf:
            end = min(len(buf), pos + rng.randint(1, 40))
            del buf[pos:end]
        elif op == 3 and buf:
            end = min(len(buf), pos + rng.randint(1, 200))
            buf[pos:pos] = buf[pos:end] * rng.randint(1, 20)
        elif op == 4 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        else:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(buf)


def corpus(
    seeds: Sequence[bytes], tokens: Sequence[bytes], n: int, seed: int = SEED
) -> Iterator[tuple[int, bytes]]:
    """``n`` mutated inputs, numbered, from the seed files (each mutation starts from a seed
    file, or from an earlier mutant one time in four)."""
    rng = random.Random(seed)
    made: list[bytes] = []
    for i in range(n):
        base = rng.choice(made) if made and rng.random() < 0.25 else rng.choice(seeds)
        out = mutate(rng, base, tokens)
        if len(made) < 500:
            made.append(out)
        yield i, out


class Hang(Exception):
    """A case ran over its time limit."""


@contextlib.contextmanager
def bounded(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread if the body runs over ``seconds``."""

    def alarm(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"{what}: still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
