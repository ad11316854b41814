"""tools/bench_hub_timeout.py: the server's requests sorted by what they ask, and the backoff pauses
counted per thread (threads sleep in parallel: the longest one, not the sum, is the wall they cost)."""

import threading

from tools import bench_hub_timeout as tool


def test_request_lines_are_sorted_by_what_they_ask():
    lines = {"GET /api/models/acme/pix/revision/main HTTP/1.1": "GET model_info",
             "GET /api/models/acme/pix/tree/main?recursive=True HTTP/1.1": "GET file tree",
             "HEAD /acme/pix/resolve/main/model_index.json HTTP/1.1": "HEAD model_index.json",
             "HEAD /acme/pix/resolve/0000/vae/config.json HTTP/1.1": "HEAD other file",
             "GET /api/agent-harnesses HTTP/1.1": "GET registry"}
    assert {line: tool.kind(line) for line in lines} == lines


def test_pauses_count_the_longest_thread_against_the_wall():
    pauses = tool.Pauses()
    pauses.slept = [(1, 1.0, 0.0), (1, 2.0, 1.0), (2, 1.0, 0.0)]
    assert pauses.words(6.0) == ("3 backoff pauses (2 x 1 s, 1 x 2 s) in 2 threads, 4 s summed; the most one "
                                 "thread slept: 3 s = 50% of the 6.0 s wall")
    assert tool.Pauses().words(1.0) == "no backoff pauses"


def test_a_pause_is_recorded_with_its_thread():
    pauses = tool.Pauses()
    pauses.sleep(0)
    assert [(t, s) for t, s, _ in pauses.slept] == [(threading.get_ident(), 0)]


def test_the_help_line_is_a_whole_sentence():
    """--help shows the docstring's first line (argparse's description): it was cut mid-sentence."""
    line = tool.__doc__.splitlines()[0]
    assert line.endswith(".") and line[0].isupper() and len(line) <= 110, line
    assert tool.__doc__.splitlines()[1] == ""
