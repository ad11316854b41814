"""`dit-compress`'s parser (compress/cli_parser.py): a file or folder whose name starts with '-', which
argparse takes for an option; its other errors and help are tested in tests/test_cli.py."""

import pytest

from compress import cli
from compress.cli_parser import build_parser

# each command with a dash-named path in one of its places, what it is, and the other arguments
DASHED = {
    "run": (["-x.yaml", "--out", "o"], "file", ["--out", "o", "--", "-x.yaml"]),
    "plan": (["-x.yaml", "--json"], "file", ["--json", "--", "-x.yaml"]),
    "importance": (["--buckets", "2", "-x.yaml"], "file", ["--buckets", "2", "--", "-x.yaml"]),
    "inspect": (["-out"], "folder", ["--", "-out"]),
    "eval": (["-out", "--seed", "1"], "folder", ["--seed", "1", "--", "-out"]),
    "bench": (["--batch", "1", "-out"], "folder", ["--batch", "1", "--", "-out"]),
    "convert": (["-x.yaml", "o"], "file", ["--", "-x.yaml", "o"]),
    "lora": (["l", "-out", "n"], "folder", ["--", "l", "-out", "n"]),
}
PLACES = {"run": ["recipe"], "plan": ["recipe"], "importance": ["source"], "inspect": ["out"], "eval": ["model"],
          "bench": ["out"], "convert": ["file", "out"], "lora": ["out", "lora", "new"]}


@pytest.fixture
def dashed(tmp_path, monkeypatch):
    """A working folder holding the file -x.yaml and the folder -out."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-x.yaml").write_text("version: 1\n")
    (tmp_path / "-out").mkdir()


def _last_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.usefixtures("dashed")
@pytest.mark.parametrize("command", sorted(DASHED))
def test_a_path_starting_with_a_dash_is_told_how_to_give_it(capsys, command):
    """`dit-compress run -x.yaml` and `inspect -out` (a file and a folder that are there) said argparse's
    'unrecognized arguments: -x.yaml' ('-out; out is given by its place, without -out' for inspect), not
    how to name them. Now one line names the command and both ways, ./-x.yaml and after --, whose
    example parses to the arguments meant."""
    given, noun, example = DASHED[command]
    token = next(t for t in given if t in ("-x.yaml", "-out"))
    said = _last_line(capsys, [command, *given])
    assert said == (f"dit-compress {command}: error: {token} is taken for an option, as its name starts with '-': "
                    f"give the {noun} as ./{token}, or after -- (dit-compress {command} {' '.join(example)})")
    parsed = vars(build_parser().parse_args([command, *example]))
    at = example.index("--")
    assert [parsed[place] for place in PLACES[command]] == example[at + 1:]
    dotted = vars(build_parser().parse_args([command, *(f"./{t}" if t == token else t for t in given)]))
    assert {k: v.removeprefix("./") if isinstance(v, str) else v for k, v in dotted.items()} == parsed


@pytest.mark.parametrize("command", sorted(PLACES))
def test_double_dash_gives_each_command_its_places(command):
    """After --, each command's arguments given by their place may start with '-' (argparse's way)."""
    names = [f"-{place}" for place in PLACES[command]]
    parsed = vars(build_parser().parse_args([command, "--", *names]))
    assert [parsed[place] for place in PLACES[command]] == names


@pytest.mark.usefixtures("dashed")
@pytest.mark.parametrize("given, value", [
    (["run", "r.yaml", "--out", "-new"], "--out=-new"),  # a folder to make: not there
    (["run", "r.yaml", "--teacher-config", "-out"], "--teacher-config=-out"),
    (["bench", "o", "--lora", "-x.yaml"], "--lora=-x.yaml"),
    (["plan", "r.yaml", "--run-d", "-r"], "--run-d=-r"),  # an abbreviation, as argparse takes it
])
def test_an_option_value_starting_with_a_dash_is_told_how_to_give_it(capsys, given, value):
    """`run R --out -new` said 'argument --out: expected one argument' alone; now it says the value was
    taken for an option and how to give it (--out=-new, which argparse takes)."""
    option, _, name = value.partition("=")
    said = _last_line(capsys, given)
    assert said.endswith(f": expected one argument; {name} is taken for an option, as it starts with '-': give "
                         f"{value}")
    assert said.startswith(f"dit-compress {given[0]}: error: argument ")


@pytest.mark.usefixtures("dashed")
@pytest.mark.parametrize("given, said", [
    (["inspect", "-nothere"], "unrecognized arguments: -nothere"),  # not a path there: a mistyped option
    (["run", "-x.yaml", "--bogus"], "unrecognized arguments: -x.yaml --bogus"),
    (["run", "-x.yaml", "r.yaml"], "unrecognized arguments: -x.yaml"),  # one place, two arguments for it
    (["run", "r.yaml", "--out", "--resume"], "argument --out: expected one argument"),  # an option of run's
    (["run", "r.yaml", "--out", "--bogus"], "argument --out: expected one argument"),
])
def test_what_is_no_dash_named_path_keeps_argparse_s_words(capsys, given, said):
    """A mistyped option, an argument too many, an option's value missing: no word of a dash-named path."""
    assert _last_line(capsys, given) == f"dit-compress {given[0]}: error: {said}"


@pytest.mark.parametrize("given, said", [
    (["importance", "--bukets", "2", "r.yaml"], "unknown option --bukets; did you mean '--buckets'?"),
    (["eval", "--sed", "1", "out"], "unknown option --sed; did you mean '--seed'?"),
    (["bench", "--warmups", "5", "out"], "unknown option --warmups"),  # close to no option of bench
    (["run", "--outt", "o", "r.yaml"], "unknown option --outt; did you mean '--out'?"),
    (["inspect", "--plto", "d", "out"], "unknown option --plto; did you mean '--plot'?"),
    (["convert", "--teacher-confg", "c.json", "f.safetensors", "o"],
     "unknown option --teacher-confg; did you mean '--teacher-config'?"),
    (["lora", "--scael", "0.5", "out", "l", "new"], "unknown option --scael; did you mean '--scale'?"),
    (["importance", "--bukets", "2", "--pngg", "h.png", "r.yaml"],
     "unknown options --bukets, --pngg; did you mean '--buckets'?"),
])
def test_a_mistyped_option_s_value_is_not_told_as_the_argument_left_over(capsys, given, said):
    """`importance --bukets 2 r.yaml` said 'unrecognized arguments: --bukets r.yaml': argparse took the 2
    (--bukets' value) for SOURCE, and listed r.yaml, the SOURCE typed, as unrecognized. Now an unknown
    option followed by a token taken for a positional argument is named alone, with the option meant."""
    assert _last_line(capsys, given) == f"dit-compress {given[0]}: error: {said}"


@pytest.mark.parametrize("given, said", [
    (["run", "r.yaml", "--outt", "x"], "unrecognized arguments: --outt x; did you mean '--out'?"),  # x left over
    (["eval", "--sed=1", "out"], "unrecognized arguments: --sed=1; did you mean '--seed'?"),  # its value in it
    (["eval", "out", "extra"], "unrecognized arguments: extra"),
    (["importance", "--bukets", "2"], "unrecognized arguments: --bukets; did you mean '--buckets'?"),  # none over
])
def test_arguments_left_over_are_still_listed(capsys, given, said):
    """Where no token after an unknown option was taken for a positional argument, or argparse left over
    only unknown options (`importance --bukets 2`: SOURCE missing, taken from 2), argparse's list stays."""
    assert _last_line(capsys, given) == f"dit-compress {given[0]}: error: {said}"


def _help_words(parser) -> list[str]:
    """Every word of `parser`'s description, epilog and arguments' help (its commands' too)."""
    texts = [parser.description, parser.epilog]
    for action in parser._actions:
        texts += [action.help, *(a.help for a in getattr(action, "_choices_actions", []))]
    return [w for t in texts if t and t != "==SUPPRESS==" for w in t.split()]


@pytest.mark.parametrize("command", [None, *sorted(PLACES)])
def test_help_at_a_narrow_width_breaks_no_name(capsys, monkeypatch, command):
    """At COLUMNS=20, argparse's help broke names at hyphens and inside words ('pixart-' / 'sigma-50',
    'dit-' / 'compress run', 'impor' / 'tance-<family>.png'): a name copied from --help was a wrong one.
    Now lines break only between words: every word of every help text is whole in the help printed."""
    monkeypatch.setenv("COLUMNS", "20")
    parser = build_parser()
    if command is not None:
        parser = next(a for a in parser._actions if a.dest == "command").choices[command]
    with pytest.raises(SystemExit) as e:
        cli.main([*([command] if command else []), "--help"])
    printed = set(capsys.readouterr().out.split())
    assert e.value.code == 0
    assert [w for w in _help_words(parser) if w not in printed] == []
    assert {"toy-pixart", "dit-compress", "importance-<family>.png"} & set(_help_words(parser)) <= printed
