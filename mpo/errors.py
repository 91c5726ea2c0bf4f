"""Errors raised for bad user input. The CLI prints them as a single line, without a traceback."""


class UserError(Exception):
    """Bad input from the user (a path, a file, a config value). The message names what is wrong."""


class DataError(UserError):
    """A bad row in a data file. ``str(err)`` reads ``file:line: field: what is wrong``."""

    def __init__(self, path: str, line: int, message: str, field: str | None = None) -> None:
        self.path, self.line, self.field, self.reason = str(path), line, field, message
        where = f"{self.path}:{line}"
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")
