"""One exception type for mistakes a person can fix; the CLI turns it into one line and exit code 2."""


class StackError(Exception):
    """Bad input or configuration: the message names the file/row/key and says what to do."""
