"""One exception type for bad input: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (unknown model, unreadable file, empty folder, missing SDK...).

    The message is shown as is, on one line, with no traceback.
    """
