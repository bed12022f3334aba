"""The one exception type a user is meant to see."""


class GeepError(Exception):
    """A problem with the user's input or environment.

    The message is one line that names the problem and the fix; the CLI prints it as
    ``geep: error: <message>`` and exits with status 2, never with a traceback.
    """
