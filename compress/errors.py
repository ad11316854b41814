"""Error types. A `UserError` is a mistake the user can fix: the CLI prints its message on one line
and exits with status 2, never a traceback. `NumericError` names the layer/block in trouble."""


class UserError(Exception):
    """Bad input from the user (recipe, path, checkpoint, option). Message is one line, actionable."""

    exit_code = 2
    label = "error: "  # what the CLI prints before the message


class NumericError(RuntimeError):
    """NaN/Inf or a failed decomposition; the message names the layer and block."""

    exit_code = 3


def read_utf8(path, label: str, hint: str) -> str:
    """The text of a file a user gave; a UserError starting with `label` if it cannot be read or is
    not UTF-8 (`label`:line, then `hint`). A leading byte-order mark (Windows editors save "UTF-8 with
    BOM") is dropped: it is no part of the text, and kept it would start the first prompt or key."""
    from pathlib import Path

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{label}: {e.strerror or e}") from None
    return decode_utf8(data, label, hint)


def decode_utf8(data: bytes, label: str, hint: str) -> str:
    """`data` (read from what `label` names) as text: read_utf8's, for bytes read another way."""
    data = data.removeprefix(b"\xef\xbb\xbf")  # not utf-8-sig, whose error offsets miss the mark
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{label}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); {hint}") from None


class BadValue(UserError):
    """A config value out of range, found by a config's `validate()` (values alone, no model). `key`
    names the recipe key, so the recipe loader can point at that key's line; `reads`, the other keys
    of its pass the check read (recipe_convert.concerned names the --sets of those alone; a recipe key
    it read is written calibration.KEY, runner_checks.recipe_reads), None where
    the check does not say (every --set of the pass is named); `group`, the block group the value
    is about where the check knows it (too many blocks of group 'single', a window of its blocks,
    a pattern naming one of its blocks), else None."""

    def __init__(self, key: str, message: str, reads: tuple[str, ...] | None = None, group: str | None = None):
        super().__init__(message)
        self.key = key
        self.reads = reads
        self.group = group


def not_at_least_one(name: str, value) -> str:
    """'--buckets must be an integer ≥ 1, got 0': a count below one, named as the user gave it (a CLI
    flag, or PASS.KEY of a recipe)."""
    return f"{name} must be an integer ≥ 1, got {value!r}"


def did_you_mean(word: str, options) -> str:
    """'; did you mean 'X'?' for the closest of `options`, or ''. Case aside: CDUA is told 'cuda', SVD
    'svd', DEVICE 'device', the option named as `options` spell it; where two are as close, the one
    closer in case too (then, as difflib's get_close_matches, the later in sort order)."""
    best = closest(word, options)
    return f"; did you mean '{best}'?" if best is not None else ""


def closest(word: str, options) -> str | None:
    """did_you_mean's option, as `options` spell it, or None where none is close (a ratio under 0.6)."""
    import difflib

    def closeness(option: str, lower: bool) -> float:  # as get_close_matches scores it (word as seq2)
        return difflib.SequenceMatcher(None, option.lower() if lower else option,
                                       word.lower() if lower else word).ratio()

    scored = [(closeness(o, True), closeness(o, False), o) for o in map(str, options)]
    best = max((s for s in scored if s[0] >= 0.6), default=None)
    return best[2] if best else None


def as_yaml(value) -> str:
    """A read value as a recipe spells it: null, true, false; others as Python quotes them (8, 1.5, 'text',
    [1, 2]), not as its repr spells null and booleans (None, True)."""
    return {type(None): "null", bool: str(value).lower()}.get(type(value)) or repr(value)


# a boolean where a choice was wanted: the word meant (YAML 1.2 reads only true and false as booleans,
# so `no`, `off` are the words themselves; a bare false is the boolean)
_BOOL_WORDS = {False: ("no", "none", "off"), True: ("yes", "on")}


# other names of the choices a recipe offers, each with the choices it may mean (compute_dtype and
# export.dtype: float16; distill.mixed_precision: fp16, and no for float32; device: cuda)
ALIASES = {"fp32": ("float32", "no"), "f32": ("float32", "no"), "float32": ("no",), "fp16": ("float16",),
           "f16": ("float16", "fp16"), "half": ("float16", "fp16"), "float16": ("fp16",), "bf16": ("bfloat16",),
           "bfloat16": ("bf16",), "gpu": ("cuda",)}


def _precision_hint(value, choices) -> str:
    """For a dtype choice given float64 (which the string distance would match to float16): that
    float32 is the most precise offered; else '' (fp16 and the like: ALIASES)."""
    if "float32" in choices and str(value).lower() in ("float64", "double", "fp64"):
        return "; float32 is the most precise offered (the factorizations compute in float64 whatever it is)"
    return ""


def not_one_of(what: str, value, choices, hint: str = "", forms=()) -> str:
    """The one wording of a value outside a key's choices: "distill.train must be one of all, factors,
    non_factors, not 'factor'; did you mean 'factors'?". The value as YAML spells it; the hint: `hint`
    where given, else float32's for float64 (_precision_hint), else the choice a boolean stands for
    (false: no), else the choice ALIASES gives its lower-case spelling (fp16: float16; of several, the
    first among the choices), else the closest choice (did_you_mean); alike at recipe load and in a
    config's validate(). `forms`: patterns listed after the choices (cuda:N), never meant."""
    hint = hint or _precision_hint(value, choices)
    if not hint and isinstance(value, bool):
        meant = [w for w in _BOOL_WORDS[value] if w in choices]
        hint = f"; did you mean '{meant[0]}'?" if meant else ""
    elif not hint:
        meant = [w for w in ALIASES.get(str(value).lower(), ()) if w in choices]
        hint = f"; did you mean '{meant[0]}'?" if meant else did_you_mean(str(value), map(str, choices))
    return f"{must_be_one_of(what, (*choices, *forms))}, not {as_yaml(value)}{hint}"


def must_be_one_of(what: str, choices) -> str:
    """'distill.train must be one of all, factors, non_factors': not_one_of's words, before the value."""
    return f"{what} must be one of {', '.join(map(str, choices))}"


NAME_MAX, PATH_MAX = 255, 4096  # Linux's limits, in bytes, of one name and of a whole path


def too_long(path) -> str:
    """What is too long in `path` (an OSError's ENAMETOOLONG): its first name over the file system's
    NAME_MAX bytes (shown cut, with its length), else the whole path over PATH_MAX; with what to do."""
    import os

    text = os.fsdecode(path)
    long = next((n for n in text.split("/") if len(os.fsencode(n)) > NAME_MAX), None)
    if long is not None:
        return f"the name {cut_middle(long)} ({len(os.fsencode(long))} bytes) is longer than a file system allows " \
               f"(at most {NAME_MAX} bytes a name); name a shorter one"
    return f"the path {cut_middle(text)} ({len(os.fsencode(text))} bytes) is longer than the system allows (at most " \
           f"{PATH_MAX} bytes a path); name a shorter one"


def folder_named(folder):
    """`folder` as an error names it: for '.' (the top of a relative path, `--plot .`), the working
    folder's absolute path ('cannot write in .' named no folder one could look at); any other as given."""
    from pathlib import Path

    if Path(folder) != Path("."):
        return folder
    try:
        return Path.cwd()
    except OSError:  # the working folder removed
        return folder


def cut_middle(text: str) -> str:
    """`text`, its middle left out where it is long: 'aaaa…aaaa'."""
    return text if len(text) <= 60 else f"{text[:40]}…{text[-16:]}"
