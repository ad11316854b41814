"""Error types. A `UserError` is a mistake the user can fix: the CLI prints its message on one line
and exits with status 2, never a traceback. `NumericError` names the layer/block in trouble."""


class UserError(Exception):
    """Bad input from the user (recipe, path, checkpoint, option). Message is one line, actionable."""

    exit_code = 2


class NumericError(RuntimeError):
    """NaN/Inf or a failed decomposition; the message names the layer and block."""

    exit_code = 3
