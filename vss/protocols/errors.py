"""
Domain errors and the one table mapping them to protocol result codes.

Services raise (or fail Deferreds with) ``VssError``; protocols turn it into an error
response carrying ``code``. Anything else that escapes a handler is answered as
INTERNAL_ERROR and logged with its traceback.
"""

from vss.protocols.codes import DESCRIPTIONS, ResultCode, describe


class VssError(Exception):
    """An error with a protocol result code and a message fit to show a user."""

    def __init__(self, code, message=None):
        try:
            self.code = ResultCode(code)
            default = DESCRIPTIONS[self.code]
        except ValueError:
            self.code = int(code)
            default = describe(code)
        self.message = message if message else default
        name = getattr(self.code, "name", f"0x{self.code:04x}")
        super().__init__(f"{name}: {self.message}")


def code_for(failure_or_exc):
    """(code, message) to answer with for an exception or a twisted Failure."""
    exc = getattr(failure_or_exc, "value", failure_or_exc)
    if isinstance(exc, VssError):
        return exc.code, exc.message
    return ResultCode.INTERNAL_ERROR, "internal error"
