"""The base of every error a user fixes: configuration, run id, auth, an unreachable server.

It is a ``click.ClickException``, so Kedro's CLI prints it as one line (``Error: ...``, exit
code 1) instead of a traceback; in Python it is an ordinary exception with the same message.
"""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """Something the user must fix; the message names the key, file, run id or URI."""

    def __str__(self) -> str:
        return self.message
