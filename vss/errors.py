"""
Domain errors and the one table mapping them to protocol result codes.

Services raise (or fail Deferreds with) ``VssError``; protocols turn it into an error
response carrying ``code``. Anything else that escapes a handler is answered as
INTERNAL_ERROR and logged with its traceback.
"""

from vss.protocols.codes import DESCRIPTIONS, ResultCode


class VssError(Exception):
    """An error with a protocol result code and a message fit to show a user."""

    def __init__(self, code, message=None):
        self.code = ResultCode(code)
        self.message = message if message is not None else DESCRIPTIONS[self.code]
        super().__init__(f"{self.code.name}: {self.message}")


def code_for(failure_or_exc):
    """(code, message) to answer with for an exception or a twisted Failure."""
    exc = getattr(failure_or_exc, "value", failure_or_exc)
    if isinstance(exc, VssError):
        return exc.code, exc.message
    return ResultCode.INTERNAL_ERROR, "internal error"
